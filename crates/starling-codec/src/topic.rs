//! Topic names and topic filters (spec 4.7): validation, shared subscription
//! parsing, and a reference matcher.
//!
//! The codec rejects wildcards in topic names itself. Filters are only validated
//! here, on request, because an invalid filter earns a SUBACK failure code, not a
//! closed connection.

/// True if `topic` contains `+` or `#`.
pub fn has_wildcard(topic: &str) -> bool {
    topic.bytes().any(|b| b == b'+' || b == b'#')
}

/// The number of levels of a topic name or filter: one more than its `/`s.
/// Linear in the length, with no allocation.
pub fn levels(topic: &str) -> usize {
    topic.bytes().filter(|&b| b == b'/').count() + 1
}

/// Why a topic filter is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The filter is empty.
    #[error("[MQTT-4.7.3-1] empty topic filter")]
    Empty,
    /// `#` is not alone in the last level.
    #[error("[MQTT-4.7.1-1] '#' must be alone in the last level")]
    MultiLevelWildcard,
    /// `+` is not alone in its level.
    #[error("[MQTT-4.7.1-2] '+' must occupy a whole level")]
    SingleLevelWildcard,
    /// `$share/` without a valid share name or filter.
    #[error("[MQTT-4.8.2-1] invalid shared subscription")]
    InvalidShare,
}

/// Checks a topic filter against the wildcard rules of spec 4.7.1.
pub fn validate_filter(filter: &str) -> Result<(), FilterError> {
    if filter.is_empty() {
        return Err(FilterError::Empty);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(FilterError::MultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(FilterError::SingleLevelWildcard);
        }
    }
    Ok(())
}

/// A `$share/{group}/{filter}` subscription, split into its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    /// The share name.
    pub group: &'a str,
    /// The filter the group subscribes to.
    pub filter: &'a str,
}

/// Splits a shared subscription. `Ok(None)` for an ordinary filter.
pub fn parse_shared(filter: &str) -> Result<Option<SharedFilter<'_>>, FilterError> {
    let Some(rest) = filter.strip_prefix("$share/") else {
        return Ok(None);
    };
    let (group, inner) = rest.split_once('/').ok_or(FilterError::InvalidShare)?;
    if group.is_empty() || has_wildcard(group) {
        return Err(FilterError::InvalidShare);
    }
    validate_filter(inner).map_err(|_| FilterError::InvalidShare)?;
    Ok(Some(SharedFilter {
        group,
        filter: inner,
    }))
}

/// Whether `topic` matches `filter` (both already valid). Topics that begin with
/// `$` do not match filters that begin with a wildcard ([MQTT-4.7.2-1]).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_validity() {
        let cases: &[(&str, bool)] = &[
            ("a", true),
            ("#", true),
            ("+", true),
            ("a/#", true),
            ("a/+/b", true),
            ("+/+", true),
            ("a//b", true),
            ("/", true),
            ("", false),
            ("a/#/b", false),
            ("a#", false),
            ("a/b#", false),
            ("a+", false),
            ("a/+b/c", false),
            ("#/", false),
        ];
        for (filter, ok) in cases {
            assert_eq!(validate_filter(filter).is_ok(), *ok, "{filter:?}");
        }
    }

    #[test]
    fn matching() {
        let cases: &[(&str, &str, bool)] = &[
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("+/+", "a/b", true),
            ("+/+", "/b", true),
            ("a//b", "a//b", true),
            ("a/+/b", "a//b", true),
            ("+", "", true),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
        ];
        for (filter, topic, m) in cases {
            assert_eq!(matches(filter, topic), *m, "{filter:?} vs {topic:?}");
        }
    }

    #[test]
    fn level_count() {
        assert_eq!(levels(""), 1);
        assert_eq!(levels("a"), 1);
        assert_eq!(levels("/"), 2);
        assert_eq!(levels("a/b/#"), 3);
        assert_eq!(levels(&"/".repeat(65_535)), 65_536);
    }

    #[test]
    fn shared() {
        assert_eq!(
            parse_shared("$share/g/a/+").unwrap(),
            Some(SharedFilter {
                group: "g",
                filter: "a/+"
            })
        );
        assert_eq!(parse_shared("a/b").unwrap(), None);
        assert!(parse_shared("$share/g").is_err());
        assert!(parse_shared("$share//a").is_err());
        assert!(parse_shared("$share/g+/a").is_err());
        assert!(parse_shared("$share/g/").is_err());
    }
}
