//! `key_stores:`: each entry names one custom key store by `id` or `name`, or every store of its
//! account-region with `all: true`, in a region and through a role; no store (and no `all: true`
//! account-region) may be listed twice.

use std::collections::HashMap;

use serde_saphyr::{Location, Spanned};

use super::{Defaults, Validator};
use crate::policy::error::quoted;
use crate::policy::raw::RawKeyStore;
use crate::policy::{KeyStoreSelector, KeyStoreSpec, MAX_KEY_STORE_NAME_CHARS, Target};

impl Validator {
    pub(super) fn key_stores(
        &mut self,
        raw: Option<Spanned<Vec<Spanned<RawKeyStore>>>>,
        defaults: Defaults<'_>,
    ) -> Option<Vec<KeyStoreSpec>> {
        let Some(list) = raw else {
            self.problem(
                None,
                "missing `key_stores:`: list at least one key store (by `id` or `name`) to disconnect",
            );
            return None;
        };
        if list.value.is_empty() {
            self.problem(
                Some(&list.referenced),
                "key_stores is empty: list at least one key store (by `id` or `name`) to disconnect",
            );
            return None;
        }
        let mut specs = Vec::new();
        let mut complete = true;
        let mut listed = ListedKeyStores::default();
        for (index, entry) in list.value.into_iter().enumerate() {
            let field = format!("key_stores[{index}]");
            match self.key_store(entry, &field, defaults, &mut listed) {
                Some(spec) => specs.push(spec),
                None => complete = false,
            }
        }
        complete.then_some(specs)
    }

    /// One entry of `key_stores:`, or `None` when it is invalid or a duplicate.
    fn key_store(
        &mut self,
        entry: Spanned<RawKeyStore>,
        field: &str,
        defaults: Defaults<'_>,
        listed: &mut ListedKeyStores,
    ) -> Option<KeyStoreSpec> {
        let location = entry.referenced;
        let store = entry.value;
        let selector = self.key_store_selector(&store, field, &location);
        let target = self.target(
            store.region.as_ref(),
            store.role_arn.as_ref(),
            field,
            defaults,
        );
        if let Some((what, earlier)) =
            listed.insert(selector.as_ref(), target.as_ref(), location.line())
        {
            self.problem(
                Some(&location),
                format!("{field}: {what} is already listed at line {earlier}"),
            );
            return None;
        }
        Some(KeyStoreSpec {
            selector: selector?,
            target: target?,
        })
    }

    /// Exactly one of `id` and `name`, or `all: true` alone.
    fn key_store_selector(
        &mut self,
        store: &RawKeyStore,
        field: &str,
        location: &Location,
    ) -> Option<KeyStoreSelector> {
        if let Some(all) = &store.all {
            return self.all_key_stores(all, store, field);
        }
        match (&store.id, &store.name) {
            (Some(id), None) => self.key_store_id(id, field),
            (None, Some(name)) => self
                .name(
                    name,
                    &format!("{field}.name"),
                    MAX_KEY_STORE_NAME_CHARS,
                    "custom key store name",
                )
                .map(KeyStoreSelector::Name),
            (Some(id), Some(_)) => {
                self.problem(
                    Some(&id.referenced),
                    format!("{field}: has both `id` and `name`; give exactly one"),
                );
                None
            }
            (None, None) => {
                self.problem(
                    Some(location),
                    format!("{field}: needs exactly one of `id` (cks-…) or `name`, or `all: true`"),
                );
                None
            }
        }
    }

    /// `all: true`: every store of the entry's account-region; it names no store itself.
    fn all_key_stores(
        &mut self,
        all: &Spanned<bool>,
        store: &RawKeyStore,
        field: &str,
    ) -> Option<KeyStoreSelector> {
        if !all.value {
            self.problem(
                Some(&all.referenced),
                format!(
                    "{field}.all: only `all: true` has a meaning; remove the key, or list the \
                     stores by `id` or `name`"
                ),
            );
            return None;
        }
        if store.id.is_some() || store.name.is_some() {
            self.problem(
                Some(&all.referenced),
                format!(
                    "{field}: `all: true` covers every store of its account and region and takes \
                     no `id` or `name`; list those in an entry of their own"
                ),
            );
            return None;
        }
        Some(KeyStoreSelector::All)
    }

    fn key_store_id(&mut self, id: &Spanned<String>, field: &str) -> Option<KeyStoreSelector> {
        let value = id.value.trim();
        let well_formed = value.strip_prefix("cks-").is_some_and(|hex| {
            hex.len() == 17
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if well_formed {
            Some(KeyStoreSelector::Id(value.to_owned()))
        } else {
            self.problem(
                Some(&id.referenced),
                format!(
                    "{field}.id: {} is not a custom key store ID: expected `cks-` and 17 lowercase \
                     hex digits, like `cks-1234567890abcdef0` (use `name:` for a store's name)",
                    quoted(&id.value)
                ),
            );
            None
        }
    }
}

/// The key stores listed so far, each with its first line, to name the earlier entry of a
/// duplicate.
#[derive(Default)]
struct ListedKeyStores {
    ids: HashMap<String, u64>,
    names: HashMap<(String, Target), u64>,
    /// Targets with an `all: true` entry.
    all: HashMap<Target, u64>,
}

impl ListedKeyStores {
    /// Record a store listed at `line`; if it was listed before, what it is and that line. An id
    /// is a duplicate whatever its target (ids are unique across AWS); a name only within the
    /// same region and role (the same name may exist in other accounts).
    fn insert(
        &mut self,
        selector: Option<&KeyStoreSelector>,
        target: Option<&Target>,
        line: u64,
    ) -> Option<(String, u64)> {
        match (selector, target) {
            (Some(KeyStoreSelector::Id(id)), _) => self
                .ids
                .insert(id.clone(), line)
                .map(|earlier| (format!("key store {id}"), earlier)),
            (Some(KeyStoreSelector::Name(name)), Some(target)) => self
                .names
                .insert((name.clone(), target.clone()), line)
                .map(|earlier| {
                    let what = format!(
                        "key store named {} in {} with the same role",
                        quoted(name),
                        target.region
                    );
                    (what, earlier)
                }),
            (Some(KeyStoreSelector::All), Some(target)) => {
                self.all.insert(target.clone(), line).map(|earlier| {
                    let what = format!("`all: true` in {} with the same role", target.region);
                    (what, earlier)
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::key_store_spread;
    use crate::policy::test_support::*;

    #[test]
    fn key_stores_must_list_at_least_one() {
        assert_one_problem(
            "version: 1\naws:\n  region: eu-west-1\n",
            None,
            "missing `key_stores:`",
        );
        assert_one_problem(
            "version: 1\naws:\n  region: eu-west-1\nkey_stores: []\n",
            Some(4),
            "key_stores is empty",
        );
    }

    #[test]
    fn key_store_needs_exactly_one_of_id_and_name() {
        assert_one_problem(
            &MINIMAL.replace(
                "  - id: cks-1234567890abcdef0",
                "  - id: cks-1234567890abcdef0\n    name: prod",
            ),
            Some(5),
            "has both `id` and `name`",
        );
        assert_one_problem(
            &MINIMAL.replace("  - id: cks-1234567890abcdef0", "  - region: eu-west-2"),
            Some(5),
            "needs exactly one of `id` (cks-…) or `name`",
        );
        assert_one_problem(
            &MINIMAL.replace("  - id: cks-1234567890abcdef0", "  - name: \"  \""),
            Some(5),
            "name is empty",
        );
        let long = "n".repeat(257);
        assert_one_problem(
            &MINIMAL.replace(
                "  - id: cks-1234567890abcdef0",
                &format!("  - name: {long}"),
            ),
            Some(5),
            "longer than 256",
        );
        assert_eq!(
            parse_ok(&MINIMAL.replace("  - id: cks-1234567890abcdef0", "  - name: prod-xks"))
                .key_stores[0]
                .selector,
            KeyStoreSelector::Name("prod-xks".into())
        );
    }

    #[test]
    fn key_store_id_must_be_cks_and_17_lowercase_hex_digits() {
        for bad in [
            "cks-123",
            "cks-1234567890ABCDEF0",
            "cks-1234567890abcdef01",
            "xks-1234567890abcdef0",
            "cks-1234567890abcdefg",
            "1234567890abcdef0",
        ] {
            assert_one_problem(
                &MINIMAL.replace("cks-1234567890abcdef0", bad),
                Some(5),
                &format!(
                    "`{bad}` is not a custom key store ID: expected `cks-` and 17 lowercase hex digits"
                ),
            );
        }
    }

    #[test]
    fn all_true_covers_an_account_region_and_stands_alone() {
        let policy = parse_ok(
            "version: 1
aws:
  region: eu-west-1
key_stores:
  - all: true
  - all: true
    region: us-east-1
    role_arn: arn:aws:iam::444455556666:role/k
  - id: cks-1234567890abcdef0
",
        );
        assert_eq!(policy.key_stores[0].selector, KeyStoreSelector::All);
        assert_eq!(policy.key_stores[0].target.region, "eu-west-1");
        assert_eq!(policy.key_stores[1].selector, KeyStoreSelector::All);
        assert_eq!(
            policy.key_stores[1].target.role_account(),
            Some("444455556666")
        );
        assert_one_problem(
            &MINIMAL.replace(
                "  - id: cks-1234567890abcdef0",
                "  - all: true\n    id: cks-1234567890abcdef0",
            ),
            Some(5),
            "`all: true` covers every store of its account and region and takes no `id` or `name`",
        );
        assert_one_problem(
            &MINIMAL.replace("  - id: cks-1234567890abcdef0", "  - all: false"),
            Some(5),
            "key_stores[0].all: only `all: true` has a meaning",
        );
        assert_one_problem(
            &MINIMAL.replace("  - id: cks-1234567890abcdef0", "  - all: yes"),
            Some(5),
            "true or false",
        );
        assert_one_problem(
            &MINIMAL.replace(
                "  - id: cks-1234567890abcdef0",
                "  - all: true\n  - all: true\n    region: eu-west-1",
            ),
            Some(6),
            "key_stores[1]: `all: true` in eu-west-1 with the same role is already listed at line 5",
        );
    }

    #[test]
    fn duplicate_key_stores_are_errors() {
        // The same id twice, even in another region.
        assert_one_problem(
            &format!("{MINIMAL}  - id: cks-1234567890abcdef0\n    region: us-east-1\n"),
            Some(6),
            "key store cks-1234567890abcdef0 is already listed at line 5",
        );
        // The same name in the same region with the same role.
        assert_one_problem(
            "version: 1\naws:\n  region: eu-west-1\nkey_stores:\n  - name: prod\n  - name: prod\n    region: eu-west-1\n",
            Some(6),
            "named `prod` in eu-west-1 with the same role is already listed at line 5",
        );
        // The same name in another region, or through another role, is another store.
        let policy = parse_ok(
            "version: 1
aws:
  region: eu-west-1
key_stores:
  - name: prod
  - name: prod
    region: us-east-1
  - name: prod
    role_arn: arn:aws:iam::444455556666:role/k
",
        );
        assert_eq!(policy.key_stores.len(), 3);
        assert_eq!(key_store_spread(&policy), (2, 2));
    }
}
