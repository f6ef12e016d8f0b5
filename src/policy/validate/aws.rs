//! `aws:` (the default region, role and endpoints), and the region, role ARN and endpoint
//! checks that key stores and alarms share through `Validator::target`.
//!
//! Knows the shapes of AWS names (regions, partitions, IAM role ARNs) without calling AWS.

use serde_saphyr::Spanned;

use super::{Defaults, Validator};
use crate::policy::error::quoted;
use crate::policy::raw::{RawAws, RawEndpoints};
use crate::policy::{Endpoints, Target};

impl Validator {
    /// `aws:` → (default region, default role, endpoints).
    pub(super) fn aws(
        &mut self,
        raw: Option<Spanned<RawAws>>,
    ) -> (Option<String>, Option<String>, Endpoints) {
        let Some(aws) = raw else {
            self.problem(
                None,
                "missing `aws:` with `region:` (the default region of the key stores and alarms)",
            );
            return (None, None, Endpoints::default());
        };
        let aws_location = aws.referenced;
        let aws = aws.value;
        let region = match aws.region {
            Some(region) => self.region(&region, "aws.region"),
            None => {
                self.problem(
                    Some(&aws_location),
                    "aws: missing `region:` (the default region of the key stores and alarms)",
                );
                None
            }
        };
        let role_arn = aws
            .role_arn
            .as_ref()
            .and_then(|arn| self.role_arn(arn, "aws.role_arn", region.as_deref()));
        let endpoints = self.endpoints(aws.endpoint_url.as_ref(), aws.endpoints.as_ref());
        (region, role_arn, endpoints)
    }

    /// `aws.endpoint_url` (all services) and `aws.endpoints.*` (one each).
    fn endpoints(
        &mut self,
        endpoint_url: Option<&Spanned<String>>,
        raw: Option<&RawEndpoints>,
    ) -> Endpoints {
        let mut endpoint = |url: Option<&Spanned<String>>, field: &str| {
            url.and_then(|url| self.endpoint(url, field))
        };
        Endpoints {
            all: endpoint(endpoint_url, "aws.endpoint_url"),
            kms: endpoint(raw.and_then(|raw| raw.kms.as_ref()), "aws.endpoints.kms"),
            cloudwatch: endpoint(
                raw.and_then(|raw| raw.cloudwatch.as_ref()),
                "aws.endpoints.cloudwatch",
            ),
            sts: endpoint(raw.and_then(|raw| raw.sts.as_ref()), "aws.endpoints.sts"),
        }
    }

    /// The region and role of a store or alarm, falling back to `aws.region` / `aws.role_arn`.
    pub(super) fn target(
        &mut self,
        region: Option<&Spanned<String>>,
        role_arn: Option<&Spanned<String>>,
        field: &str,
        defaults: Defaults<'_>,
    ) -> Option<Target> {
        let region = match region {
            Some(region) => self.region(region, &format!("{field}.region"))?,
            // A missing aws.region is reported once, not again for every store.
            None => defaults.region?.to_owned(),
        };
        let role_arn = match role_arn {
            Some(arn) => Some(self.role_arn(arn, &format!("{field}.role_arn"), Some(&region))?),
            None => {
                let role = defaults.role_arn.map(str::to_owned);
                // A default role from another partition cannot work in this region.
                if let Some(role) = &role
                    && region_partition(&region) != arn_partition(role)
                {
                    self.problem(
                        None,
                        format!(
                            "{field}: region {region} is in partition {} but aws.role_arn is in \
                             partition {}: give this entry its own `role_arn`",
                            region_partition(&region),
                            arn_partition(role)
                        ),
                    );
                    return None;
                }
                role
            }
        };
        Some(Target { region, role_arn })
    }

    /// A region name such as `eu-west-1`, `us-gov-west-1` or `cn-north-1`.
    fn region(&mut self, region: &Spanned<String>, field: &str) -> Option<String> {
        let value = region.value.trim();
        if is_region(value) {
            Some(value.to_owned())
        } else {
            self.problem(
                Some(&region.referenced),
                format!(
                    "{field}: {} is not an AWS region name: expected something like `eu-west-1`, \
                     `us-gov-west-1` or `cn-north-1`",
                    quoted(&region.value)
                ),
            );
            None
        }
    }

    /// `arn:<partition>:iam::<12 digits>:role/<optional path/>name`, in the region's partition.
    fn role_arn(
        &mut self,
        arn: &Spanned<String>,
        field: &str,
        region: Option<&str>,
    ) -> Option<String> {
        let value = arn.value.trim();
        if !is_role_arn(value) {
            self.problem(
                Some(&arn.referenced),
                format!(
                    "{field}: {} is not an IAM role ARN: expected \
                     `arn:aws:iam::<12-digit account>:role/<name>` (partitions aws, aws-cn, aws-us-gov)",
                    quoted(&arn.value)
                ),
            );
            return None;
        }
        if let Some(region) = region
            && region_partition(region) != arn_partition(value)
        {
            self.problem(
                Some(&arn.referenced),
                format!(
                    "{field}: the role is in partition {} but region {region} is in partition {}",
                    arn_partition(value),
                    region_partition(region)
                ),
            );
            return None;
        }
        Some(value.to_owned())
    }

    /// An https URL (or http to a loopback host) with a host and no credentials in it.
    fn endpoint(&mut self, url: &Spanned<String>, field: &str) -> Option<String> {
        let value = url.value.trim();
        let message = match url::Url::parse(value) {
            _ if !value.contains("://") => {
                format!(
                    "{field}: {} must be an http:// or https:// URL",
                    quoted(value)
                )
            }
            Err(err) => format!(
                "{field}: {} is not a URL ({err}): expected e.g. `https://kms.eu-west-1.amazonaws.com`",
                quoted(value)
            ),
            Ok(parsed) if !matches!(parsed.scheme(), "http" | "https") => format!(
                "{field}: {} must be an http:// or https:// URL",
                quoted(value)
            ),
            Ok(parsed) if parsed.host_str().is_none_or(str::is_empty) => {
                format!("{field}: {} has no host", quoted(value))
            }
            // Never echo the URL here: it holds what looks like a secret.
            Ok(parsed) if !parsed.username().is_empty() || parsed.password().is_some() => format!(
                "{field}: the URL contains a user name or password; credentials never go in the policy"
            ),
            Ok(parsed) if parsed.query().is_some() || parsed.fragment().is_some() => format!(
                "{field}: {} must not have a query (?…) or fragment (#…)",
                quoted(value)
            ),
            // KMS replies are not signed: over plain http anyone on the path could answer
            // DISCONNECTED for a store that is still connected.
            Ok(parsed) if parsed.scheme() == "http" && !is_loopback(&parsed) => format!(
                "{field}: {} uses http:// to a host that is not loopback; KMS replies are not \
                 signed, so anyone on the path could fake them: use https://, or http:// only \
                 to 127.0.0.0/8, ::1 or localhost",
                quoted(value)
            ),
            Ok(_) => return Some(value.to_owned()),
        };
        self.problem(Some(&url.referenced), message);
        None
    }
}

/// Whether the URL's host is this machine: 127.0.0.0/8, ::1 or `localhost`.
pub(super) fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// `eu-west-1`, `us-gov-west-1`, `cn-north-1`, `ap-southeast-2`, `us-isob-east-1`,
/// `eusc-de-east-1`: a 2–4 letter prefix, one or more lowercase words, and a number.
pub(super) fn is_region(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return false;
    };
    let word = |part: &&str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase());
    (2..=4).contains(&first.len())
        && word(first)
        && !middle.is_empty()
        && middle.iter().all(word)
        && (1..=2).contains(&last.len())
        && last.bytes().all(|b| b.is_ascii_digit())
}

/// Region prefixes outside the `aws` partition, and their partition.
const REGION_PARTITIONS: &[(&str, &str)] = &[
    ("cn-", "aws-cn"),
    ("us-gov-", "aws-us-gov"),
    ("us-iso-", "aws-iso"),
    ("us-isob-", "aws-iso-b"),
    ("eu-isoe-", "aws-iso-e"),
    ("us-isof-", "aws-iso-f"),
    ("eusc-", "aws-eusc"),
];

pub(super) fn region_partition(region: &str) -> &'static str {
    REGION_PARTITIONS
        .iter()
        .find(|(prefix, _)| region.starts_with(prefix))
        .map_or("aws", |(_, partition)| partition)
}

fn arn_partition(arn: &str) -> &str {
    arn.split(':').nth(1).unwrap_or("")
}

/// `arn:<partition>:iam::<12 digits>:role/<path/>name` with IAM's name characters.
fn is_role_arn(value: &str) -> bool {
    let mut fields = value.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("iam"), Some(""), Some(account), Some(resource)) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return false;
    };
    let known_partition = partition == "aws"
        || REGION_PARTITIONS
            .iter()
            .any(|(_, known)| *known == partition);
    let Some(role_path) = resource.strip_prefix("role/") else {
        return false;
    };
    // IAM role names and path segments: letters, digits and `+=,.@_-`; names up to 64 chars.
    let iam_chars = |segment: &str| {
        !segment.is_empty()
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
    };
    let segments: Vec<&str> = role_path.split('/').collect();
    known_partition
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && role_path.len() <= 512
        && segments.iter().all(|segment| iam_chars(segment))
        && segments.last().is_some_and(|name| name.len() <= 64)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::policy::test_support::*;
    use crate::policy::{Position, parse};

    #[test]
    fn aws_region_is_required() {
        assert_one_problem(
            "version: 1\nkey_stores:\n  - id: cks-1234567890abcdef0\n",
            None,
            "missing `aws:`",
        );
        assert_one_problem(
            "version: 1\naws:\n  role_arn: arn:aws:iam::111122223333:role/k\nkey_stores:\n  - id: cks-1234567890abcdef0\n",
            Some(3),
            "aws: missing `region:`",
        );
    }

    #[test]
    fn role_arns_must_be_well_formed() {
        for bad in [
            "arn:aws:iam::1111:role/k",
            "arn:aws:iam::11112222333a:role/k",
            "arn:aws:iam::111122223333:user/k",
            "arn:aws:iam::111122223333:role/",
            "arn:aws:iam::111122223333:role/a//b",
            "arn:aws:iam:eu-west-1:111122223333:role/k",
            "arn:aws:sts::111122223333:role/k",
            "arn:aws-mars:iam::111122223333:role/k",
            "arn:aws:iam::111122223333:role/has space",
            "role/k",
        ] {
            assert_one_problem(
                &MINIMAL.replace(
                    "key_stores:",
                    &format!("  role_arn: \"{bad}\"\nkey_stores:"),
                ),
                Some(4),
                "is not an IAM role ARN",
            );
        }
        let long_name = "r".repeat(65);
        assert_one_problem(
            &MINIMAL.replace(
                "key_stores:",
                &format!("  role_arn: arn:aws:iam::111122223333:role/{long_name}\nkey_stores:"),
            ),
            Some(4),
            "is not an IAM role ARN",
        );
        for good in [
            "arn:aws:iam::111122223333:role/kms-killswitch",
            "arn:aws:iam::111122223333:role/ops/team/k+=,.@_-",
        ] {
            let policy = parse_ok(
                &MINIMAL.replace("key_stores:", &format!("  role_arn: {good}\nkey_stores:")),
            );
            assert_eq!(policy.role_arn.as_deref(), Some(good));
            assert_eq!(
                policy.key_stores[0].target.role_account(),
                Some("111122223333")
            );
        }
    }

    #[test]
    fn role_partition_must_match_the_region() {
        let cn = parse_ok(
            "version: 1\naws:\n  region: cn-north-1\n  role_arn: arn:aws-cn:iam::111122223333:role/k\nkey_stores:\n  - id: cks-1234567890abcdef0\n",
        );
        assert_eq!(cn.region, "cn-north-1");
        let gov = parse_ok(
            "version: 1\naws:\n  region: us-gov-west-1\nkey_stores:\n  - id: cks-1234567890abcdef0\n    role_arn: arn:aws-us-gov:iam::111122223333:role/k\n",
        );
        assert_eq!(gov.key_stores[0].target.region, "us-gov-west-1");
        assert_one_problem(
            "version: 1\naws:\n  region: eu-west-1\n  role_arn: arn:aws-cn:iam::111122223333:role/k\nkey_stores:\n  - id: cks-1234567890abcdef0\n",
            Some(4),
            "the role is in partition aws-cn but region eu-west-1 is in partition aws",
        );
        // A store in another partition cannot inherit the default role.
        assert_one_problem(
            "version: 1\naws:\n  region: eu-west-1\n  role_arn: arn:aws:iam::111122223333:role/k\nkey_stores:\n  - id: cks-1234567890abcdef0\n    region: cn-north-1\n",
            None,
            "key_stores[0]: region cn-north-1 is in partition aws-cn but aws.role_arn is in partition aws",
        );
    }

    #[test]
    fn regions_must_be_well_formed() {
        for bad in [
            "eu_west_1",
            "EU-WEST-1",
            "euwest1",
            "eu-west",
            "eu-west-",
            "e-west-1",
            "eu-west-123",
            "eu west 1",
            "",
        ] {
            assert_one_problem(
                &MINIMAL.replace("region: eu-west-1", &format!("region: \"{bad}\"")),
                Some(3),
                "is not an AWS region name",
            );
        }
        for good in [
            "eu-west-1",
            "us-gov-west-1",
            "cn-north-1",
            "ap-southeast-2",
            "il-central-1",
            "us-isob-east-1",
            "eusc-de-east-1",
        ] {
            assert_eq!(parse_ok(&MINIMAL.replace("eu-west-1", good)).region, good);
        }
        assert_one_problem(
            &format!("{MINIMAL}    region: eu-west-1a\n"),
            Some(6),
            "key_stores[0].region: `eu-west-1a` is not an AWS region name",
        );
    }

    #[test]
    fn endpoint_urls_must_be_http_urls_without_credentials() {
        let with = |url: &str| {
            MINIMAL.replace(
                "key_stores:",
                &format!("  endpoint_url: \"{url}\"\nkey_stores:"),
            )
        };
        assert_one_problem(
            &with("ftp://127.0.0.1"),
            Some(4),
            "must be an http:// or https:// URL",
        );
        assert_one_problem(
            &with("127.0.0.1:4599"),
            Some(4),
            "must be an http:// or https:// URL",
        );
        assert_one_problem(&with("http://exa mple"), Some(4), "is not a URL");
        assert_one_problem(
            &with("http://127.0.0.1/?x=1"),
            Some(4),
            "must not have a query",
        );
        let problems = problems(&with("https://AKIA:hunter2@kms.example"));
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0]
                .message
                .contains("credentials never go in the policy")
        );
        assert!(
            !problems[0].message.contains("hunter2"),
            "a secret was echoed: {problems:?}"
        );
        assert_one_problem(
            &MINIMAL.replace(
                "key_stores:",
                "  endpoints:\n    kms: kms.local\nkey_stores:",
            ),
            Some(5),
            "aws.endpoints.kms",
        );
        assert_eq!(
            parse_ok(&with("http://127.0.0.1:4599"))
                .endpoints
                .all
                .as_deref(),
            Some("http://127.0.0.1:4599")
        );
    }

    #[test]
    fn plain_http_endpoints_must_be_loopback_and_https_may_go_anywhere() {
        let all = |url: &str| {
            MINIMAL.replace(
                "key_stores:",
                &format!("  endpoint_url: \"{url}\"\nkey_stores:"),
            )
        };
        let one = |service: &str, url: &str| {
            MINIMAL.replace(
                "key_stores:",
                &format!("  endpoints:\n    {service}: {url}\nkey_stores:"),
            )
        };
        for url in [
            "http://127.0.0.1:4599",
            "http://127.3.2.1",
            "http://[::1]:4599",
            "http://localhost:4599",
            "http://LocalHost",
            "https://kms.eu-west-1.amazonaws.com",
            "https://10.0.0.8:8443",
        ] {
            assert_eq!(
                parse_ok(&all(url)).endpoints.all.as_deref(),
                Some(url),
                "{url}"
            );
            assert_eq!(
                parse_ok(&one("kms", url)).endpoints.kms.as_deref(),
                Some(url),
                "{url}"
            );
        }
        for url in [
            "http://kms.eu-west-1.amazonaws.com",
            "http://10.0.0.8:4599",
            "http://128.0.0.1",
            "http://[::2]",
            "http://[::ffff:10.0.0.1]",
            "http://localhost.example.com",
            "http://0.0.0.0:4599",
        ] {
            let problems = problems(&all(url));
            assert_eq!(problems.len(), 1, "{url}: {problems:?}");
            assert_eq!(
                problems[0].position,
                Some(Position {
                    line: 4,
                    column: 17
                }),
                "{url}: {problems:?}"
            );
            let message = &problems[0].message;
            assert!(
                message.starts_with("aws.endpoint_url: ")
                    && message.contains("not loopback")
                    && message.contains("not signed"),
                "{url}: {message}"
            );
        }
        for service in ["kms", "cloudwatch", "sts"] {
            let problems = problems(&one(service, "http://kms.example:80"));
            assert_eq!(problems.len(), 1, "{service}: {problems:?}");
            assert_eq!(
                problems[0].position.map(|p| p.line),
                Some(5),
                "{problems:?}"
            );
            assert!(
                problems[0]
                    .message
                    .starts_with(&format!("aws.endpoints.{service}: ")),
                "{problems:?}"
            );
        }
        let err = parse(&all("http://kms.example"), Path::new(PATH))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("line 4, column 17"), "{err}");
    }
}
