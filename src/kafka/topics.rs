//! Which topics a command works on: one selector for the sink, the restore, `find`, `verify`, `ls`,
//! `retention` and the demo.
//!
//! Invariant: a pattern matches whole topic names (`orders` never selects `orders-dlq`), the
//! exclusion wins over the pattern, and Kafka's internal topics (`__consumer_offsets`,
//! `__transaction_state`, …) are never backed up. The pattern is kept as the user wrote it, for
//! messages and for recognising a resumed restore; nothing strips the anchoring back off.

use regex::Regex;

/// A `--topics` pattern (and a `--exclude`, where the command has one), compiled to match whole
/// names.
#[derive(Debug, Clone)]
pub struct TopicSelector {
    pattern: String,
    regex: Regex,
    exclude: Option<Regex>,
}

impl TopicSelector {
    /// Every topic whose whole name matches `pattern`.
    pub fn new(pattern: &str) -> Result<TopicSelector, regex::Error> {
        Ok(TopicSelector {
            pattern: pattern.to_string(),
            regex: anchored(pattern)?,
            exclude: None,
        })
    }

    /// Every topic.
    pub fn all() -> TopicSelector {
        TopicSelector::new(".*").expect(".* is a valid pattern")
    }

    /// Exactly the topic named `topic`.
    pub fn exactly(topic: &str) -> TopicSelector {
        TopicSelector::new(&regex::escape(topic)).expect("an escaped name is a valid pattern")
    }

    /// The same selection less the topics whose whole name matches `exclude`.
    pub fn excluding(self, exclude: Option<&str>) -> Result<TopicSelector, regex::Error> {
        Ok(TopicSelector {
            exclude: exclude.map(anchored).transpose()?,
            ..self
        })
    }

    /// The pattern as the user wrote it.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The compiled pattern, anchored to whole names.
    pub fn anchored(&self) -> &str {
        self.regex.as_str()
    }

    /// Whether `topic` matches the pattern and not the exclusion (an archived topic name, which is
    /// never an internal one).
    pub fn is_match(&self, topic: &str) -> bool {
        self.regex.is_match(topic) && !self.exclude.as_ref().is_some_and(|e| e.is_match(topic))
    }

    /// Whether a topic of the cluster is selected: matched, not excluded and not internal.
    pub fn selects(&self, topic: &str) -> bool {
        !is_internal(topic) && self.is_match(topic)
    }
}

/// What is wrong with a pattern, in one line: the regex crate's own message spans several lines
/// (the pattern, a caret under the fault, then the fault).
pub fn regex_problem(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text.lines().last().unwrap_or_default().trim();
    last.strip_prefix("error: ").unwrap_or(last).to_string()
}

/// Kafka's internal topics start with `__`; Rewind never backs up its own or the broker's internals.
pub fn is_internal(topic: &str) -> bool {
    topic.starts_with("__")
}

fn anchored(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_names_exclusions_and_internal_topics() {
        let s = TopicSelector::new("orders|pay.*")
            .unwrap()
            .excluding(Some("payments-dlq"))
            .unwrap();
        assert_eq!(s.pattern(), "orders|pay.*");
        assert_eq!(s.anchored(), "^(?:orders|pay.*)$");
        assert!(s.selects("orders") && s.selects("payments"));
        assert!(!s.selects("orders-dlq"), "whole names only");
        assert!(!s.selects("payments-dlq"), "the exclusion wins");
        assert!(TopicSelector::all().is_match("__consumer_offsets"));
        assert!(!TopicSelector::all().selects("__consumer_offsets"));
        assert!(TopicSelector::exactly("a.b").is_match("a.b"));
        assert!(!TopicSelector::exactly("a.b").is_match("axb"));
        assert!(TopicSelector::new("orders(").is_err());
    }
}
