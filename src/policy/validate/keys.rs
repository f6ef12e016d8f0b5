//! `keys:`: standard KMS keys to disable on a trip, each named by `arn` (a key ARN or an alias
//! ARN, which carry their region and account), or by `id` / `alias` with `region` / `role_arn`.
//! An alias under `alias/aws/` names an AWS managed key, which nobody can disable: refused here.
//! No key may be listed twice.

use std::collections::HashMap;

use serde_saphyr::{Location, Spanned};

use super::{Defaults, Validator};
use crate::model::{KeySelector, KeySpec};
use crate::policy::error::quoted;
use crate::policy::raw::RawKey;

/// Alias names are 1 to 256 characters, `alias/` included (KMS API reference).
const MAX_ALIAS_CHARS: usize = 256;
/// The prefix KMS reserves for the aliases of AWS managed keys.
const AWS_MANAGED_ALIAS_PREFIX: &str = "alias/aws/";

impl Validator {
    /// `keys:` (optional; an empty list is the same as none).
    pub(super) fn keys(
        &mut self,
        raw: Option<Spanned<Vec<Spanned<RawKey>>>>,
        defaults: Defaults<'_>,
    ) -> Option<Vec<KeySpec>> {
        let Some(list) = raw else {
            return Some(Vec::new());
        };
        let mut specs = Vec::new();
        let mut complete = true;
        let mut listed: HashMap<(KeySelector, Option<String>, String), u64> = HashMap::new();
        for (index, entry) in list.value.into_iter().enumerate() {
            let field = format!("keys[{index}]");
            let location = entry.referenced;
            match self.key(entry.value, &field, &location, defaults) {
                Some(spec) => {
                    let key = (
                        spec.selector.clone(),
                        spec.target.role_arn.clone(),
                        spec.target.region.clone(),
                    );
                    if let Some(earlier) = listed.insert(key, location.line()) {
                        self.problem(
                            Some(&location),
                            format!(
                                "{field}: key {} in {} with the same role is already listed at line {earlier}",
                                quoted(spec.selector.as_key_id()),
                                spec.target.region
                            ),
                        );
                        complete = false;
                    } else {
                        specs.push(spec);
                    }
                }
                None => complete = false,
            }
        }
        complete.then_some(specs)
    }

    /// One entry of `keys:`, or `None` when it is invalid.
    fn key(
        &mut self,
        key: RawKey,
        field: &str,
        location: &Location,
        defaults: Defaults<'_>,
    ) -> Option<KeySpec> {
        match (&key.arn, &key.id, &key.alias) {
            (Some(arn), None, None) => self.key_by_arn(arn, &key, field, defaults),
            (None, Some(id), None) => {
                let selector = self.key_id(id, field);
                let target =
                    self.target(key.region.as_ref(), key.role_arn.as_ref(), field, defaults);
                Some(KeySpec {
                    selector: selector?,
                    target: target?,
                })
            }
            (None, None, Some(alias)) => {
                let selector = self.key_alias(alias, field);
                let target =
                    self.target(key.region.as_ref(), key.role_arn.as_ref(), field, defaults);
                Some(KeySpec {
                    selector: selector?,
                    target: target?,
                })
            }
            (None, None, None) => {
                self.problem(
                    Some(location),
                    format!("{field}: needs exactly one of `arn`, `id` or `alias`"),
                );
                None
            }
            _ => {
                self.problem(
                    Some(location),
                    format!(
                        "{field}: has more than one of `arn`, `id` and `alias`; give exactly one"
                    ),
                );
                None
            }
        }
    }

    /// `arn:` — a key ARN or an alias ARN; the region is the ARN's, the role the entry's or
    /// `aws.role_arn`, and a role of another account than the key's cannot disable it.
    fn key_by_arn(
        &mut self,
        arn: &Spanned<String>,
        key: &RawKey,
        field: &str,
        defaults: Defaults<'_>,
    ) -> Option<KeySpec> {
        let value = arn.value.trim();
        let Some(parsed) = parse_kms_arn(value) else {
            self.problem(
                Some(&arn.referenced),
                format!(
                    "{field}.arn: {} is not a KMS key or alias ARN: expected \
                     `arn:aws:kms:<region>:<12-digit account>:key/<key id>` or `…:alias/<name>`",
                    quoted(&arn.value)
                ),
            );
            return None;
        };
        if let Some(region) = &key.region {
            self.problem(
                Some(&region.referenced),
                format!(
                    "{field}: `region` is not used with `arn` (the ARN names region {}); remove it",
                    parsed.region
                ),
            );
            return None;
        }
        let selector = if let Some(alias) = parsed.resource.strip_prefix("alias/") {
            if format!("alias/{alias}").starts_with(AWS_MANAGED_ALIAS_PREFIX) {
                self.aws_managed(&arn.referenced, field, value);
                return None;
            }
            KeySelector::AliasArn(value.to_owned())
        } else {
            KeySelector::KeyArn(value.to_owned())
        };
        let region = Spanned::new(parsed.region.to_owned(), arn.referenced, arn.defined);
        let target = self.target(Some(&region), key.role_arn.as_ref(), field, defaults)?;
        if let Some(role_account) = target.role_account()
            && role_account != parsed.account
        {
            self.problem(
                Some(&arn.referenced),
                format!(
                    "{field}: the key is in account {} but its role is in account {role_account}: \
                     DisableKey cannot cross accounts; give the entry a `role_arn` in {}",
                    parsed.account, parsed.account
                ),
            );
            return None;
        }
        Some(KeySpec { selector, target })
    }

    fn key_id(&mut self, id: &Spanned<String>, field: &str) -> Option<KeySelector> {
        let value = id.value.trim();
        if is_key_id(value) {
            return Some(KeySelector::Id(value.to_owned()));
        }
        self.problem(
            Some(&id.referenced),
            format!(
                "{field}.id: {} is not a KMS key id: expected a UUID like \
                 `1234abcd-12ab-34cd-56ef-1234567890ab` or `mrk-` and 32 hex digits (use `alias:` \
                 for an alias, `arn:` for an ARN)",
                quoted(&id.value)
            ),
        );
        None
    }

    fn key_alias(&mut self, alias: &Spanned<String>, field: &str) -> Option<KeySelector> {
        let value = alias.value.trim();
        if value.starts_with(AWS_MANAGED_ALIAS_PREFIX) {
            self.aws_managed(&alias.referenced, field, value);
            return None;
        }
        if is_alias_name(value) {
            return Some(KeySelector::Alias(value.to_owned()));
        }
        self.problem(
            Some(&alias.referenced),
            format!(
                "{field}.alias: {} is not a KMS alias name: expected `alias/` and up to 250 of \
                 `a-zA-Z0-9/_-`, like `alias/payments`",
                quoted(&alias.value)
            ),
        );
        None
    }

    fn aws_managed(&mut self, location: &Location, field: &str, value: &str) {
        self.problem(
            Some(location),
            format!(
                "{field}: {} names an AWS managed key (`alias/aws/…`): AWS managed keys cannot be \
                 disabled by anyone; remove the entry",
                quoted(value)
            ),
        );
    }
}

/// The parts of a KMS ARN.
struct KmsArn<'a> {
    region: &'a str,
    account: &'a str,
    /// `key/<id>` or `alias/<name>`.
    resource: &'a str,
}

/// `arn:<partition>:kms:<region>:<12 digits>:key/<id>` or `…:alias/<name>`.
fn parse_kms_arn(value: &str) -> Option<KmsArn<'_>> {
    let mut fields = value.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("kms"), Some(region), Some(account), Some(resource)) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return None;
    };
    let well_formed = partition.starts_with("aws")
        && !region.is_empty()
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && (resource.strip_prefix("key/").is_some_and(is_key_id) || is_alias_name(resource));
    well_formed.then_some(KmsArn {
        region,
        account,
        resource,
    })
}

/// A UUID (8-4-4-4-12 lowercase or uppercase hex) or `mrk-` and 32 hex digits.
fn is_key_id(value: &str) -> bool {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(rest) = value.strip_prefix("mrk-") {
        return rest.len() == 32 && hex(rest);
    }
    let parts: Vec<&str> = value.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(part, len)| part.len() == len && hex(part))
}

/// `alias/` and then KMS's alias characters.
fn is_alias_name(value: &str) -> bool {
    value.strip_prefix("alias/").is_some_and(|name| {
        !name.is_empty()
            && value.chars().count() <= MAX_ALIAS_CHARS
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Target;
    use crate::policy::test_support::*;

    const KEY_ARN: &str =
        "arn:aws:kms:us-east-1:444455556666:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    fn with_keys(keys: &str) -> String {
        format!("{MINIMAL}keys:\n{keys}")
    }

    #[test]
    fn keys_are_optional_and_read_every_form() {
        assert!(parse_ok(MINIMAL).keys.is_empty());
        let policy = parse_ok(&with_keys(&format!(
            "  - arn: {KEY_ARN}\n    role_arn: arn:aws:iam::444455556666:role/k\n\
             \x20 - arn: arn:aws:kms:eu-west-1:111122223333:alias/payments\n\
             \x20 - id: mrk-1e1a0000000040008000000000000002\n    region: us-east-1\n\
             \x20 - alias: alias/ledger\n"
        )));
        assert_eq!(
            policy.keys[0],
            KeySpec {
                selector: KeySelector::KeyArn(KEY_ARN.into()),
                target: Target {
                    region: "us-east-1".into(),
                    role_arn: Some("arn:aws:iam::444455556666:role/k".into()),
                },
            }
        );
        assert!(matches!(policy.keys[1].selector, KeySelector::AliasArn(_)));
        assert_eq!(policy.keys[1].target.region, "eu-west-1");
        assert_eq!(
            policy.keys[2].selector,
            KeySelector::Id("mrk-1e1a0000000040008000000000000002".into())
        );
        assert_eq!(policy.keys[2].target.region, "us-east-1");
        assert_eq!(
            policy.keys[3].selector,
            KeySelector::Alias("alias/ledger".into())
        );
        assert_eq!(policy.keys[3].target.region, "eu-west-1");
    }

    #[test]
    fn aws_managed_keys_are_refused_with_their_reason() {
        assert_one_problem(
            &with_keys("  - alias: alias/aws/ebs\n"),
            Some(7),
            "keys[0]: `alias/aws/ebs` names an AWS managed key (`alias/aws/…`): AWS managed keys cannot be disabled",
        );
        assert_one_problem(
            &with_keys("  - arn: arn:aws:kms:eu-west-1:111122223333:alias/aws/s3\n"),
            Some(7),
            "names an AWS managed key",
        );
    }

    #[test]
    fn malformed_keys_are_one_line_errors() {
        for (entry, needle) in [
            ("  - id: 1234\n", "keys[0].id: `1234` is not a KMS key id"),
            (
                "  - alias: payments\n",
                "keys[0].alias: `payments` is not a KMS alias name",
            ),
            (
                "  - arn: arn:aws:kms:eu-west-1:1111:key/x\n",
                "is not a KMS key or alias ARN",
            ),
            (
                "  - region: eu-west-1\n",
                "needs exactly one of `arn`, `id` or `alias`",
            ),
            (
                "  - id: 1234abcd-12ab-34cd-56ef-1234567890ab\n    alias: alias/x\n",
                "has more than one of `arn`, `id` and `alias`",
            ),
            (
                &format!("  - arn: {KEY_ARN}\n    region: us-east-1\n"),
                "`region` is not used with `arn`",
            ),
            (
                &format!("  - arn: {KEY_ARN}\n    role_arn: arn:aws:iam::111122223333:role/k\n"),
                "the key is in account 444455556666 but its role is in account 111122223333",
            ),
        ] {
            let problems = problems(&with_keys(entry));
            assert_eq!(problems.len(), 1, "{entry}: {problems:?}");
            assert!(
                problems[0].message.contains(needle),
                "{entry}: {problems:?}"
            );
            assert!(!problems[0].message.contains('\n'));
        }
    }

    #[test]
    fn a_key_listed_twice_is_an_error() {
        assert_one_problem(
            &with_keys("  - alias: alias/x\n  - alias: alias/x\n    region: eu-west-1\n"),
            Some(8),
            "keys[1]: key `alias/x` in eu-west-1 with the same role is already listed at line 7",
        );
    }
}
