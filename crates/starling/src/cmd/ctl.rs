//! `starling ctl`: the operator's client of a running broker's admin HTTP API
//! (`/api/v1`, served by starling-admin), as `emqx ctl` and `mosquitto_ctrl`
//! are for theirs. It owns the requests (base URL, bearer token from a file,
//! paging through lists, timeouts), the printing of answers as tables or as
//! the API's JSON, and turning every failure (API errors, connection
//! failures, answers that are not the API's) into one `error: ...` line on
//! stderr and exit status 1. The API's shapes are starling-admin's; this
//! module reads them loosely (a missing field prints as `-`), never panics
//! on what the server sends, and escapes control characters before they
//! reach the terminal.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Map, Value};

/// Items asked for per page of a list (the API's largest page).
const PAGE_LIMIT: u32 = 1000;
/// Most pages read of one list, so that a list that never ends (or a server
/// that always says there is more) cannot keep `ctl` running.
const MAX_PAGES: u32 = 1000;
/// How long connecting to the broker may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may take, answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Characters of a retained payload shown in the table.
const PAYLOAD_WIDTH: usize = 40;
/// The Session Expiry Interval that means "never".
const NEVER: u64 = u32::MAX as u64;

const EXAMPLES: &str = "\
Examples:
  starling ctl clients
  starling ctl --url https://broker.example:8081 --token-file ~/.starling-token sessions
  starling ctl client sensor-17
  starling ctl kick sensor-17
  starling ctl retained 'building/+/temperature'
  starling ctl stats --json | jq .connections

Lists (clients, sessions, retained) are read page by page until the last one
(at most 1000 pages of 1000). With --json they print as one object: every
page's data, and the last page's meta. kick prints nothing with --json (the API
answers it with no body).

Exit status: 0 on success, 1 when the request failed (the reason is one line
on stderr, starting with \"error:\"), 2 for a wrong command line.";

/// Arguments of `starling ctl`.
#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct CtlArgs {
    /// Base URL of the broker's HTTP listener (its --http-listen).
    #[arg(
        long,
        value_name = "URL",
        env = "STARLING_CTL_URL",
        default_value = "http://127.0.0.1:8081",
        global = true
    )]
    url: String,
    /// File holding the admin API's bearer token: its first line that is
    /// neither empty nor a `#` comment (the broker's --http-token-file will
    /// do). Needed when the broker has a token file.
    #[arg(
        long,
        value_name = "FILE",
        env = "STARLING_CTL_TOKEN_FILE",
        global = true
    )]
    token_file: Option<PathBuf>,
    /// Print the API's JSON, pretty, instead of tables (for scripts).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

/// What `starling ctl` does.
#[derive(clap::Subcommand, Debug)]
enum CtlCommand {
    /// List the connected clients (GET /api/v1/clients).
    Clients,
    /// Show one client and its subscriptions (GET /api/v1/clients/ID).
    ///
    /// Works for a client that is not connected but has a session.
    Client {
        /// The client identifier.
        id: String,
    },
    /// Disconnect a client (DELETE /api/v1/clients/ID).
    ///
    /// An MQTT 5 client gets DISCONNECT 0x98 (Administrative action); its
    /// will is published and its session stays as its expiry interval says.
    /// Prints "disconnected ID".
    Kick {
        /// The client identifier.
        id: String,
    },
    /// List every session, connected or not (GET /api/v1/sessions).
    Sessions,
    /// List the retained messages whose topic matches FILTER
    /// (GET /api/v1/retained).
    Retained {
        /// A topic filter; wildcards allowed.
        #[arg(default_value = "#")]
        filter: String,
    },
    /// Show broker-wide figures (GET /api/v1/stats).
    Stats,
}

/// Runs one `starling ctl` command. Its own failures are printed here, as
/// one `error:` line, and give exit status 1.
pub fn run(args: CtlArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match runtime.block_on(execute(args)) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(err) => {
            let line = clean(&format!("{err:#}"));
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "error: {line}");
            Ok(ExitCode::from(1))
        }
    }
}

async fn execute(args: CtlArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.url, args.token_file.as_deref())?;
    let json = args.json;
    let out = match args.command {
        CtlCommand::Clients => {
            let list = api.list(&["clients"], &[]).await?;
            if json {
                pretty(&list)?
            } else {
                clients_table(&list)
            }
        }
        CtlCommand::Client { id } => {
            let client = api.get(&api.url(&["clients"], Some(&id), &[])?).await?;
            if json {
                pretty(&client)?
            } else {
                client_details(&client)
            }
        }
        CtlCommand::Kick { id } => {
            let url = api.url(&["clients"], Some(&id), &[])?;
            api.call(Method::DELETE, &url).await?;
            if json {
                String::new()
            } else {
                format!("disconnected {}\n", clean(&id))
            }
        }
        CtlCommand::Sessions => {
            let list = api.list(&["sessions"], &[]).await?;
            if json {
                pretty(&list)?
            } else {
                sessions_table(&list)
            }
        }
        CtlCommand::Retained { filter } => {
            let list = api.list(&["retained"], &[("filter", &filter)]).await?;
            if json {
                pretty(&list)?
            } else {
                retained_table(&list)
            }
        }
        CtlCommand::Stats => {
            let stats = api.get(&api.url(&["stats"], None, &[])?).await?;
            if json {
                pretty(&stats)?
            } else {
                stats_lines(&stats)
            }
        }
    };
    print(&out)
}

/// Writes `out` to stdout; a reader that went away (`ctl clients | head`)
/// is not an error.
fn print(out: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

fn pretty(v: &Value) -> anyhow::Result<String> {
    let mut s = serde_json::to_string_pretty(v).context("cannot print the JSON")?;
    s.push('\n');
    Ok(s)
}

/// The admin API of one broker.
struct Api {
    http: reqwest::Client,
    base: Url,
    /// The token file, when a token is sent (to say which token was refused).
    token_file: Option<PathBuf>,
}

impl Api {
    fn new(url: &str, token_file: Option<&Path>) -> anyhow::Result<Api> {
        let mut base = Url::parse(url).with_context(|| format!("--url {url}"))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            bail!("--url {url}: not an http:// or https:// URL");
        }
        base.set_query(None);
        base.set_fragment(None);
        let mut headers = HeaderMap::new();
        if let Some(path) = token_file {
            let token = read_token(path)?;
            let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                anyhow!(
                    "the token in {} holds characters an HTTP header cannot carry",
                    path.display()
                )
            })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("starling-ctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Api {
            http,
            base,
            token_file: token_file.map(Path::to_path_buf),
        })
    }

    /// The URL of `/api/v1/<segments>/<id>?<query>`, `id` encoded as one
    /// path segment.
    fn url(
        &self,
        segments: &[&str],
        id: Option<&str>,
        query: &[(&str, &str)],
    ) -> anyhow::Result<Url> {
        if let Some(id) = id {
            // A URL cannot carry these as a path segment: URL parsers,
            // reqwest's included, resolve them (even percent-encoded).
            if id.is_empty() || id == "." || id == ".." {
                bail!("the client id {id:?} cannot be named in the API's URLs");
            }
        }
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| anyhow!("--url {}: not a base URL", self.base))?
            .pop_if_empty()
            .extend(["api", "v1"])
            .extend(segments)
            .extend(id);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    /// GET `url`: its JSON answer.
    async fn get(&self, url: &Url) -> anyhow::Result<Value> {
        self.call(Method::GET, url)
            .await?
            .ok_or_else(|| anyhow!("{url} answered with no body"))
    }

    /// Every item of a paged list, as `{"data": [...], "meta": <the last
    /// page's meta>}`.
    async fn list(&self, segments: &[&str], query: &[(&str, &str)]) -> anyhow::Result<Value> {
        let limit = PAGE_LIMIT.to_string();
        let mut data = Vec::new();
        let mut meta = Value::Null;
        for page in 1..=MAX_PAGES {
            let page = page.to_string();
            let mut q = query.to_vec();
            q.extend([("page", page.as_str()), ("limit", limit.as_str())]);
            let url = self.url(segments, None, &q)?;
            let Value::Object(mut answer) = self.get(&url).await? else {
                bail!("{url} answered with JSON that is not an object");
            };
            let Some(Value::Array(items)) = answer.remove("data") else {
                bail!("{url} answered without a data list");
            };
            meta = answer.remove("meta").unwrap_or(Value::Null);
            let more = meta.get("hasnext").and_then(Value::as_bool) == Some(true);
            let empty = items.is_empty();
            data.extend(items);
            if !more || empty {
                return Ok(page_of(data, meta));
            }
        }
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(
            stderr,
            "warning: stopped after {MAX_PAGES} pages ({} items); the list goes on",
            data.len()
        );
        Ok(page_of(data, meta))
    }

    /// Sends a request: the JSON of a successful answer (`None` when it has
    /// no body), or an error that says why, in one line.
    async fn call(&self, method: Method, url: &Url) -> anyhow::Result<Option<Value>> {
        let response = self
            .http
            .request(method, url.clone())
            .send()
            .await
            .map_err(|e| request_error(&e, url))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| anyhow!("reading the answer of {url}: {}", root_cause(&e)))?;
        if !status.is_success() {
            return Err(self.api_error(status, &body, url));
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        serde_json::from_slice(&body).map(Some).map_err(|e| {
            anyhow!("{url} answered HTTP {status} with something that is not JSON ({e}); is --url the broker's --http-listen?")
        })
    }

    /// The error for an answer with a failure status: the API's message, the
    /// status, and what to do about a 401.
    fn api_error(&self, status: StatusCode, body: &[u8], url: &Url) -> anyhow::Error {
        let code = status.as_u16();
        let message = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(String::from));
        let message = match message {
            Some(m) => m,
            None => format!(
                "{} from {url}, not an answer of the admin API",
                status.canonical_reason().unwrap_or("an error")
            ),
        };
        let hint = match (status, &self.token_file) {
            (StatusCode::UNAUTHORIZED, None) => {
                "; the broker wants a token: pass its token file with --token-file FILE (or STARLING_CTL_TOKEN_FILE)".to_string()
            }
            (StatusCode::UNAUTHORIZED, Some(path)) => format!(
                "; the token in {} (--token-file) was refused",
                path.display()
            ),
            _ => String::new(),
        };
        anyhow!("{message} (HTTP {code}){hint}")
    }
}

fn page_of(data: Vec<Value>, meta: Value) -> Value {
    let mut page = Map::new();
    page.insert("data".into(), Value::Array(data));
    page.insert("meta".into(), meta);
    Value::Object(page)
}

/// The token of a token file: its first line that is neither empty nor a
/// `#` comment, trimmed.
fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .ok_or_else(|| {
            anyhow!(
                "the token file {} holds no token (a line that is neither empty nor a # comment)",
                path.display()
            )
        })
}

/// A failed request, said in one line that names the URL.
fn request_error(e: &reqwest::Error, url: &Url) -> anyhow::Error {
    if e.is_connect() {
        anyhow!("cannot connect to {url}: {}", root_cause(e))
    } else if e.is_timeout() {
        anyhow!("no answer from {url} within {}s", REQUEST_TIMEOUT.as_secs())
    } else {
        anyhow!("request to {url} failed: {}", root_cause(e))
    }
}

/// The innermost cause of `e` (reqwest's outer layers only repeat the URL).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// `s` with control characters escaped (`\n`, `\u{1b}`), safe to print on
/// a terminal and on one line.
fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The field at JSON pointer `at` as a table cell: text as is (cleaned),
/// numbers and booleans as JSON writes them, `-` when absent or null.
fn cell(v: &Value, at: &str) -> String {
    match v.pointer(at) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => clean(s),
        Some(other) => clean(&other.to_string()),
    }
}

fn yes_no(v: &Value, at: &str) -> String {
    match v.pointer(at).and_then(Value::as_bool) {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => "-".into(),
    }
}

fn expiry(v: &Value, at: &str) -> String {
    match v.pointer(at).and_then(Value::as_u64) {
        Some(NEVER) => "never".into(),
        Some(secs) => format!("{secs}s"),
        None => cell(v, at),
    }
}

/// How many items the array at `at` holds.
fn count(v: &Value, at: &str) -> String {
    v.pointer(at)
        .and_then(Value::as_array)
        .map_or_else(|| "-".into(), |a| a.len().to_string())
}

/// The items of a list page.
fn items(list: &Value) -> &[Value] {
    list.get("data")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Rows under a header, each column as wide as its widest cell, two spaces
/// apart; no trailing spaces.
fn table(header: &[&str], rows: &[Vec<String>], indent: &str) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = indent.to_string();
        for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `key  value` lines, the values aligned.
fn pairs(pairs: &[(String, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}").trim_end().to_string() + "\n")
        .collect()
}

fn clients_table(list: &Value) -> String {
    let rows: Vec<Vec<String>> = items(list)
        .iter()
        .map(|c| {
            vec![
                cell(c, "/client_id"),
                cell(c, "/username"),
                cell(c, "/connection/address"),
                cell(c, "/connection/protocol"),
                cell(c, "/connection/keep_alive"),
                cell(c, "/queued"),
                cell(c, "/in_flight"),
                count(c, "/subscriptions"),
            ]
        })
        .collect();
    table(
        &[
            "CLIENT ID",
            "USER",
            "ADDRESS",
            "PROTOCOL",
            "KEEPALIVE",
            "QUEUED",
            "INFLIGHT",
            "SUBS",
        ],
        &rows,
        "",
    )
}

fn sessions_table(list: &Value) -> String {
    let rows: Vec<Vec<String>> = items(list)
        .iter()
        .map(|s| {
            vec![
                cell(s, "/client_id"),
                yes_no(s, "/connected"),
                yes_no(s, "/persistent"),
                expiry(s, "/expiry_interval"),
                cell(s, "/queued"),
                cell(s, "/in_flight"),
            ]
        })
        .collect();
    table(
        &[
            "CLIENT ID",
            "CONNECTED",
            "PERSISTENT",
            "EXPIRY",
            "QUEUED",
            "INFLIGHT",
        ],
        &rows,
        "",
    )
}

/// A retained payload for the table: its text, cut to [`PAYLOAD_WIDTH`]
/// characters, or its size when it is not UTF-8.
fn payload(m: &Value) -> String {
    match m.get("payload") {
        Some(Value::String(text)) => {
            let text = clean(text);
            if text.chars().count() > PAYLOAD_WIDTH {
                let cut: String = text.chars().take(PAYLOAD_WIDTH - 3).collect();
                cut + "..."
            } else {
                text
            }
        }
        _ => format!("<{} bytes binary>", cell(m, "/size")),
    }
}

fn retained_table(list: &Value) -> String {
    let rows: Vec<Vec<String>> = items(list)
        .iter()
        .map(|m| {
            vec![
                cell(m, "/topic"),
                cell(m, "/qos"),
                cell(m, "/size"),
                payload(m),
            ]
        })
        .collect();
    table(&["TOPIC", "QOS", "SIZE", "PAYLOAD"], &rows, "")
}

fn client_details(c: &Value) -> String {
    let connected_at = match c
        .pointer("/connection/connected_at")
        .and_then(Value::as_u64)
    {
        Some(secs) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            format!("{} ({}s ago)", utc(secs), now.saturating_sub(secs))
        }
        None => cell(c, "/connection/connected_at"),
    };
    let mut lines = vec![
        ("client id", cell(c, "/client_id")),
        ("username", cell(c, "/username")),
        ("connected", yes_no(c, "/connected")),
    ];
    if c.pointer("/connection").is_some_and(Value::is_object) {
        lines.extend([
            ("address", cell(c, "/connection/address")),
            ("listener", cell(c, "/connection/listener")),
            ("transport", cell(c, "/connection/transport")),
            ("protocol", cell(c, "/connection/protocol")),
            ("keepalive", cell(c, "/connection/keep_alive") + "s"),
            ("connected at", connected_at),
        ]);
    }
    lines.extend([
        ("persistent", yes_no(c, "/persistent")),
        ("expiry", expiry(c, "/expiry_interval")),
        (
            "queued",
            format!(
                "{} ({} bytes)",
                cell(c, "/queued"),
                cell(c, "/queued_bytes")
            ),
        ),
        ("in flight", cell(c, "/in_flight")),
        ("dropped", cell(c, "/dropped")),
    ]);
    let lines: Vec<(String, String)> = lines.into_iter().map(|(k, v)| (k.into(), v)).collect();
    let mut out = pairs(&lines);
    let subs = c
        .get("subscriptions")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    if subs.is_empty() {
        out.push_str("\nsubscriptions: none\n");
    } else {
        let rows: Vec<Vec<String>> = subs
            .iter()
            .map(|s| vec![cell(s, "/filter"), cell(s, "/qos")])
            .collect();
        let _ = writeln!(out, "\nsubscriptions ({}):", subs.len());
        out.push_str(&table(&["FILTER", "QOS"], &rows, "  "));
    }
    out
}

/// The API's figures, in the order the API documents them; fields this
/// version does not know follow.
const STATS_ORDER: &[&str] = &[
    "version",
    "uptime_seconds",
    "connections",
    "connections_parked",
    "sessions",
    "persistent_sessions",
    "subscriptions",
    "retained",
    "queued",
    "queued_bytes",
    "in_flight",
    "messages_received",
    "messages_sent",
    "messages_dropped",
    "messages_expired",
    "bytes_received",
    "bytes_sent",
    "connects",
    "auth_failures",
];

fn stats_lines(stats: &Value) -> String {
    let Some(fields) = stats.as_object() else {
        return pairs(&[("stats".into(), cell(stats, ""))]);
    };
    let known = STATS_ORDER.iter().filter(|k| fields.contains_key(**k));
    let others = fields
        .keys()
        .map(String::as_str)
        .filter(|k| !STATS_ORDER.contains(k));
    let lines: Vec<(String, String)> = known
        .copied()
        .chain(others)
        .map(|k| (clean(k), cell(&fields[k], "")))
        .collect();
    pairs(&lines)
}

/// Seconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rest = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dates_are_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn tables_pad_columns_and_escape_control_characters() {
        let t = table(
            &["A", "LONG HEADER", "C"],
            &[vec!["xyz".into(), "1".into(), "".into()]],
            "  ",
        );
        assert_eq!(t, "  A    LONG HEADER  C\n  xyz  1\n");
        let t = table(&["A", "B"], &[vec![clean("x\u{1b}[2J"), "1".into()]], "");
        assert_eq!(t, "A           B\nx\\u{1b}[2J  1\n");
    }

    #[test]
    fn payloads_are_cut_or_sized() {
        let long = "a".repeat(100);
        assert_eq!(
            payload(&json!({"payload": long, "size": 100}))
                .chars()
                .count(),
            40
        );
        assert_eq!(
            payload(&json!({"payload": null, "size": 3})),
            "<3 bytes binary>"
        );
        assert_eq!(payload(&json!({"payload": "a\nb"})), "a\\nb");
    }

    #[test]
    fn urls_encode_the_client_id_as_one_segment() {
        let api = Api::new("http://127.0.0.1:8081/prefix/", None).unwrap();
        let url = api.url(&["clients"], Some("a/b c?#%"), &[]).unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8081/prefix/api/v1/clients/a%2Fb%20c%3F%23%25"
        );
        assert!(api.url(&["clients"], Some(".."), &[]).is_err());
        let url = api
            .url(&["retained"], None, &[("filter", "a/+/#")])
            .unwrap();
        assert_eq!(url.query(), Some("filter=a%2F%2B%2F%23"));
        assert!(Api::new("mqtt://127.0.0.1:1883", None).is_err());
    }

    #[test]
    fn stats_keep_the_api_order() {
        let s = stats_lines(&json!({"zeta": 1, "connections": 2, "version": "0.1.0"}));
        assert_eq!(s, "version      0.1.0\nconnections  2\nzeta         1\n");
    }
}
