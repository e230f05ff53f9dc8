//! MQTT topics and filters as NATS subjects, reversibly.
//!
//! A topic's levels become a subject's tokens, after [`PREFIX`]. A NATS token
//! cannot be empty nor hold `.`, `*`, `>` or white space, while an MQTT level
//! may be empty and hold almost anything; so each level is escaped: bytes
//! outside `A-Z a-z 0-9 _ -` become `%XX` (upper-case hex), and an empty
//! level becomes `%00` (U+0000 never appears in an MQTT topic
//! [MQTT-1.5.4-2], so it cannot be confused with a real level).
//!
//! In filters, `+` becomes `*` and `#` becomes `>`; as MQTT's `a/#` also
//! matches `a` itself, such a filter needs a second subject without the
//! `>`. A `#` filter matches `$`-topics on the NATS side; the receiving
//! node routes through its own subscription index, which applies MQTT's
//! rule [MQTT-4.7.2-1], so only bandwidth is spent on them.

/// The first token of every message subject.
pub const PREFIX: &str = "m";

/// Escapes one topic level into a NATS token.
fn escape(level: &str, out: &mut String) {
    if level.is_empty() {
        out.push_str("%00");
        return;
    }
    for b in level.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
        }
    }
}

/// Unescapes one NATS token into a topic level; `None` when it is not an
/// escaped level.
fn unescape(token: &str) -> Option<String> {
    if token == "%00" {
        return Some(String::new());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                let b = u8::from_str_radix(hex, 16).ok()?;
                if b == 0 {
                    return None;
                }
                out.push(b);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// The subject a message on `topic` is published on.
pub fn of_topic(topic: &str) -> String {
    let mut out = String::with_capacity(PREFIX.len() + topic.len() + 8);
    out.push_str(PREFIX);
    for level in topic.split('/') {
        out.push('.');
        escape(level, &mut out);
    }
    out
}

/// The topic a message subject stands for; `None` when it is not one.
pub fn to_topic(subject: &str) -> Option<String> {
    let mut tokens = subject.split('.');
    if tokens.next()? != PREFIX {
        return None;
    }
    let levels: Option<Vec<String>> = tokens.map(unescape).collect();
    let levels = levels?;
    (!levels.is_empty()).then(|| levels.join("/"))
}

/// The subjects a node subscribes to for an MQTT filter (without a
/// `$share/group/` prefix): one, or two for a filter ending in `#`.
pub fn of_filter(filter: &str) -> Vec<String> {
    let mut subject = String::with_capacity(PREFIX.len() + filter.len() + 8);
    subject.push_str(PREFIX);
    let mut parent = None;
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        match *level {
            "#" if i + 1 == levels.len() => {
                if i > 0 {
                    parent = Some(subject.clone());
                }
                subject.push_str(".>");
            }
            "+" => subject.push_str(".*"),
            level => {
                subject.push('.');
                escape(level, &mut subject);
            }
        }
    }
    let mut out = vec![subject];
    out.extend(parent);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// NATS's matching of a subject against a subscription subject.
    fn nats_matches(sub: &str, subject: &str) -> bool {
        let mut s = sub.split('.');
        let mut t = subject.split('.');
        loop {
            match (s.next(), t.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    #[test]
    fn examples() {
        assert_eq!(of_topic("a/b"), "m.a.b");
        assert_eq!(of_topic("/x//y."), "m.%00.x.%00.y%2E");
        assert_eq!(of_topic("s p*>"), "m.s%20p%2A%3E");
        assert_eq!(of_topic("é"), "m.%C3%A9");
        assert_eq!(of_filter("a/+/c"), ["m.a.*.c"]);
        assert_eq!(of_filter("a/#"), ["m.a.>", "m.a"]);
        assert_eq!(of_filter("#"), ["m.>"]);
        assert_eq!(to_topic("m.%00.x.%00.y%2E").as_deref(), Some("/x//y."));
        assert_eq!(to_topic("x.a"), None);
        assert_eq!(to_topic("m.a b"), None);
        assert_eq!(to_topic("m.%0"), None);
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z]{1,3}",
            "[ .*>%$é_-]{1,3}",
            "[a-c. ]{1,4}",
        ]
    }

    fn topic() -> impl Strategy<Value = String> {
        proptest::collection::vec(level(), 1..5).prop_map(|l| l.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        let part = prop_oneof![level(), Just("+".to_string())];
        (proptest::collection::vec(part, 0..4), any::<bool>()).prop_filter_map(
            "a filter has at least one level",
            |(mut levels, hash)| {
                if hash {
                    levels.push("#".into());
                }
                (!levels.is_empty()).then(|| levels.join("/"))
            },
        )
    }

    proptest! {
        #[test]
        fn topics_round_trip(t in topic()) {
            let subject = of_topic(&t);
            prop_assert!(subject.split('.').all(|tok| !tok.is_empty()
                && !tok.contains([' ', '*', '>'])));
            prop_assert_eq!(to_topic(&subject), Some(t));
        }

        #[test]
        fn a_filters_subjects_match_exactly_the_topics_it_matches(f in filter(), t in topic()) {
            // $-topics aside: the receiving node applies that rule itself.
            prop_assume!(!t.starts_with('$'));
            let subject = of_topic(&t);
            let nats = of_filter(&f).iter().any(|s| nats_matches(s, &subject));
            prop_assert_eq!(nats, starling_codec::topic::matches(&f, &t), "{} {}", f, t);
        }
    }
}
