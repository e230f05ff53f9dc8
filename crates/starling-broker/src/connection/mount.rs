//! Mountpoints (`mountpoint = "tenant/a/"` in a `[[listener]]` table): a topic
//! prefix that isolates a listener's clients from the rest of the broker.
//!
//! - Topic names a client publishes, its will topic, and the filters it
//!   subscribes and unsubscribes (inside `$share/group/` too) get the prefix.
//! - Messages delivered to it lose the prefix; one whose topic does not start
//!   with it is not delivered to that client.
//! - `$SYS` topics and filters are left as they are.
//!
//! The ACL sees the prefixed topics: they are the topics the broker routes.

use starling_codec::topic::{parse_shared, validate_filter};
use starling_codec::ByteString;

/// Whether `topic` (or filter) is in the `$SYS` tree.
fn is_sys(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}

/// The topic name (or plain filter) `topic` of a client under `mount`.
pub(crate) fn topic(mount: &str, topic: &str) -> ByteString {
    if is_sys(topic) {
        ByteString::from(topic)
    } else {
        ByteString::from(format!("{mount}{topic}"))
    }
}

/// The filter `filter` of a client under `mount`: `$share/group/F` becomes
/// `$share/group/{mount}F`.
pub(crate) fn filter(mount: &str, filter: &str) -> ByteString {
    match parse_shared(filter) {
        Ok(Some(shared)) if !is_sys(shared.filter) => {
            ByteString::from(format!("$share/{}/{mount}{}", shared.group, shared.filter))
        }
        Ok(Some(_)) => ByteString::from(filter),
        _ => topic(mount, filter),
    }
}

/// `f` as a client under `mount` (if any) means it.
pub(crate) fn filter_for(mount: Option<&ByteString>, f: &ByteString) -> ByteString {
    match mount {
        Some(m) => filter(m, f),
        None => f.clone(),
    }
}

/// Whether a prefixed filter is still a valid one (a mountpoint without a
/// trailing `/` can make `#` or `+` share a level with it).
pub(crate) fn valid_filter(filter: &str) -> bool {
    match parse_shared(filter) {
        Ok(Some(shared)) => validate_filter(shared.filter).is_ok(),
        Ok(None) => validate_filter(filter).is_ok(),
        Err(_) => false,
    }
}

/// The topic a message on `topic` has for a client under `mount`: without the
/// prefix, or unchanged without a mountpoint or for `$SYS`. `None` when the
/// message is outside the mountpoint and not for this client.
pub(crate) fn strip(mount: Option<&ByteString>, topic: &ByteString) -> Option<ByteString> {
    let prefix = stripped_len(mount, topic)?;
    Some(if prefix == 0 {
        topic.clone()
    } else {
        topic.slice_ref(&topic[prefix..])
    })
}

/// How many bytes [`strip`] takes off the front of `topic`; `None` when the
/// client does not see it.
pub(crate) fn stripped_len(mount: Option<&ByteString>, topic: &str) -> Option<usize> {
    let Some(mount) = mount else {
        return Some(0);
    };
    if is_sys(topic) {
        return Some(0);
    }
    let rest = topic.strip_prefix(&**mount)?;
    // A topic name has at least one character ([MQTT-4.7.3-1]).
    (!rest.is_empty()).then_some(mount.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_strip() {
        let m = "tenant/a/";
        assert_eq!(topic(m, "x/y"), "tenant/a/x/y");
        assert_eq!(topic(m, "$SYS/broker/uptime"), "$SYS/broker/uptime");
        assert_eq!(filter(m, "x/#"), "tenant/a/x/#");
        assert_eq!(filter(m, "#"), "tenant/a/#");
        assert_eq!(filter(m, "$share/g/x/+"), "$share/g/tenant/a/x/+");
        assert_eq!(filter(m, "$share/g/$SYS/#"), "$share/g/$SYS/#");
        assert_eq!(filter(m, "$SYS/#"), "$SYS/#");
        assert!(valid_filter(&filter(m, "$share/g/#")));
        assert!(!valid_filter(&filter("tenant", "#")));
        assert!(!valid_filter(&filter("tenant", "$share/g/+/x")));
        let mount = ByteString::from(m);
        let s = |t: &str| strip(Some(&mount), &ByteString::from(t));
        assert_eq!(s("tenant/a/x").as_deref(), Some("x"));
        assert_eq!(s("tenant/b/x"), None);
        assert_eq!(s("tenant/a"), None);
        assert_eq!(s("tenant/a/"), None);
        assert_eq!(s("$SYS/x").as_deref(), Some("$SYS/x"));
        assert_eq!(strip(None, &ByteString::from("t")).as_deref(), Some("t"));
    }
}
