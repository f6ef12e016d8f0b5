//! Why a policy is refused: [`PolicyError`], its [`Problem`]s and their [`Position`]s, and the
//! wording of YAML errors (serde-saphyr's messages, reworded and without their own location
//! suffix, so YAML and semantic problems print in one form).
//!
//! Every message here prints on one line with control characters escaped ([`quoted`]): the
//! error goes to the terminal and, as is, into the audit log. Knows nothing of the policy's
//! fields; those messages belong to `validate`.

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;

use serde_saphyr::Location;

/// Where in the policy file a problem is (1-based, in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

/// One thing wrong with a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `None` when the problem is about something missing, or YAML gave no location.
    pub position: Option<Position>,
    /// One lowercase sentence, already safe to print (no control characters).
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(Position { line, column }) => {
                write!(f, "line {line}, column {column}: {}", self.message)
            }
            None => f.write_str(&self.message),
        }
    }
}

/// The problems of an invalid policy, joined on one line.
struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [only] = self.0 {
            return write!(f, "{only}");
        }
        write!(f, "{} problems: ", self.0.len())?;
        for (index, problem) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// Why a policy could not be loaded. Its `Display` is the whole, readable report on one line
/// (the audit log's `policy_rejected.error` uses it as is).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be opened or read (missing, a directory, permission denied, too big).
    #[error("policy {}: cannot read it: {error}", path.display())]
    Read {
        path: PathBuf,
        /// Not a `#[source]`: the message already includes it, and the chain must not repeat it.
        error: std::io::Error,
    },
    /// The file's owner or mode would let someone other than root or the daemon's user change
    /// what gets disconnected.
    #[error(
        "policy {file}: refusing a file {reason}: whoever can write the policy controls the kill switch \
         (fix: `chown root: {file} && chmod go-w {file}`, or pass --insecure-policy-permissions for \
         development only)",
        file = path.display()
    )]
    Insecure { path: PathBuf, reason: String },
    /// The YAML is malformed, or well-formed but wrong: every problem found, in file order.
    #[error("policy {}: {}", path.display(), ProblemList(problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

/// A YAML error (syntax, an unknown or duplicate key, a value of the wrong type) as a problem.
pub(super) fn yaml_problem(err: &serde_saphyr::Error) -> Problem {
    Problem {
        position: err.location().and_then(position),
        message: err.render_with_options(render_options()),
    }
}

/// Render a YAML error as a bare message: the position is printed by [`Problem`].
fn render_options() -> serde_saphyr::RenderOptions<'static> {
    static FORMATTER: PolicyMessages = PolicyMessages;
    let mut options = serde_saphyr::RenderOptions::new(&FORMATTER);
    options.snippets = serde_saphyr::SnippetMode::Off;
    options
}

/// serde-saphyr's user-facing messages, with clearer wording for numbers and without the
/// location suffix (ours comes first, in the same form for YAML and semantic problems).
struct PolicyMessages;

impl serde_saphyr::MessageFormatter for PolicyMessages {
    fn localizer(&self) -> &dyn serde_saphyr::Localizer {
        static NO_SUFFIX: NoLocationSuffix = NoLocationSuffix;
        &NO_SUFFIX
    }

    fn format_message<'a>(&self, err: &'a serde_saphyr::Error) -> Cow<'a, str> {
        match err {
            serde_saphyr::Error::InvalidScalar { ty, .. }
                if matches!(*ty, "u8" | "u16" | "u32" | "u64" | "usize") =>
            {
                Cow::Borrowed("expected a whole number, 0 or more")
            }
            serde_saphyr::Error::Unexpected {
                expected: "mapping start",
                ..
            } => Cow::Borrowed("expected a mapping here (`key: value` lines)"),
            serde_saphyr::Error::Unexpected {
                expected: "sequence start",
                ..
            } => Cow::Borrowed("expected a list here (`- item` lines)"),
            serde_saphyr::Error::Unexpected {
                expected: "string scalar",
                ..
            } => Cow::Borrowed("expected a single value here, not a list or mapping"),
            serde_saphyr::Error::Budget { breach, .. } => Cow::Owned(budget_message(breach)),
            other => match serde_saphyr::UserMessageFormatter.format_message(other) {
                // The scanner's own limit on nested flow collections (`[[[…`, `{a: {a: …`).
                message if message == "recursion limit exceeded" => Cow::Owned(format!(
                    "the policy nests more than {} levels deep, so it was not read (a policy needs only a few)",
                    serde_saphyr::Budget::default().flow_nesting_limit
                )),
                message => message,
            },
        }
    }
}

/// One sentence for a breached parser limit (serde-saphyr prints the breach's Debug form). The
/// limits are serde-saphyr's defaults ([`serde_saphyr::Budget`]), named in the sentence.
fn budget_message(breach: &serde_saphyr::budget::BudgetBreach) -> String {
    use serde_saphyr::budget::BudgetBreach as B;
    let limits = serde_saphyr::Budget::default();
    let what = match breach {
        B::Aliases { .. } => format!("has more than {} aliases (`*name`)", limits.max_aliases),
        B::AliasAnchorRatio { aliases, anchors } => format!(
            "uses {aliases} aliases for {anchors} anchors (more than {} per anchor)",
            limits.alias_anchor_ratio_multiplier
        ),
        B::Anchors { .. } => format!("has more than {} anchors (`&name`)", limits.max_anchors),
        B::Depth { .. } => format!("nests more than {} levels deep", limits.max_depth),
        B::Events { .. } => format!("has more than {} YAML events", limits.max_events),
        B::Nodes { .. } => format!("has more than {} values", limits.max_nodes),
        B::Documents { .. } => format!("has more than {} YAML documents", limits.max_documents),
        B::MergeKeys { .. } => format!("has more than {} merge keys (`<<`)", limits.max_merge_keys),
        B::ScalarBytes { .. } => "holds more text than the parser's limit".to_owned(),
        B::InputBytes { .. } => "is larger than the parser's limit".to_owned(),
        _ => "expands beyond the parser's limits (anchors, aliases or nesting)".to_owned(),
    };
    format!("the policy {what}, so it was not read (a policy needs only a few dozen lines)")
}

struct NoLocationSuffix;

impl serde_saphyr::Localizer for NoLocationSuffix {
    fn attach_location<'a>(&self, base: Cow<'a, str>, _location: Location) -> Cow<'a, str> {
        base
    }
    fn alias_used_at(&self, _used: Location) -> String {
        String::new()
    }
}

/// Where a YAML location is, or `None` when serde-saphyr does not know.
pub(super) fn position(location: Location) -> Option<Position> {
    (location != Location::UNKNOWN).then(|| Position {
        line: location.line(),
        column: location.column(),
    })
}

/// A value from the policy in backticks, with control characters escaped so it prints on one line.
pub(super) fn quoted(value: &str) -> String {
    format!("`{}`", value.escape_debug())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::policy::parse;
    use crate::policy::test_support::*;

    #[test]
    fn the_error_is_one_readable_line_naming_the_file_line_and_column() {
        let err = parse(
            &format!("{MINIMAL}lockdown:\n  rate_limit: 0\n  verify_timeout: x\n"),
            Path::new(PATH),
        )
        .expect_err("invalid");
        let text = err.to_string();
        assert!(!text.contains('\n'), "{text}");
        assert!(
            text.starts_with("policy /etc/kms-killswitch/policy.yaml: 2 problems: line 7, column 15: lockdown.rate_limit"),
            "{text}"
        );
        assert!(
            text.contains("; line 8, column 19: lockdown.verify_timeout: `x` is not a duration"),
            "{text}"
        );
        let err = parse("version: 1\nfoo: [\n", Path::new(PATH)).expect_err("invalid");
        assert!(
            err.to_string()
                .starts_with("policy /etc/kms-killswitch/policy.yaml: line 2"),
            "{err}"
        );
    }

    #[test]
    fn control_characters_in_values_are_escaped() {
        let err = parse(
            &MINIMAL.replace("eu-west-1", "\"eu\\nwest\\u001b[31m\""),
            Path::new(PATH),
        )
        .expect_err("invalid");
        let text = err.to_string();
        assert!(!text.contains('\n') && !text.contains('\u{1b}'), "{text:?}");
        assert!(text.contains("`eu\\nwest\\u{1b}[31m`"), "{text}");
    }
}
