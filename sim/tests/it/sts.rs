//! STS through aws-sdk-sts and aws-config's AssumeRoleProvider: temporary credentials act in the
//! role's account; who may assume what comes from the world; expired and forged tokens fail.

use aws_config::sts::AssumeRoleProvider;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_kms::config::Credentials;
use kms_sim::{Role, World};

use crate::support::*;

#[tokio::test]
async fn assume_role_returns_temporary_credentials_for_the_role_account() {
    let sim = start(quiet_world());
    let sts = sts(&sim, REGION).await;
    let out = sts
        .assume_role()
        .role_arn(ROLE_ARN)
        .role_session_name("kms-killswitch-test")
        .send()
        .await
        .unwrap();
    let creds = out.credentials().unwrap();
    assert!(creds.access_key_id().starts_with("ASIA"));
    assert!(!creds.secret_access_key().is_empty() && !creds.session_token().is_empty());
    let now = aws_smithy_now();
    assert!(
        creds.expiration().secs() > now + 3000,
        "default session lasts an hour"
    );
    let user = out.assumed_role_user().unwrap();
    assert_eq!(
        user.arn(),
        "arn:aws:sts::222222222222:assumed-role/kms-killswitch/kms-killswitch-test"
    );

    let me = sts.get_caller_identity().send().await.unwrap();
    assert_eq!(me.account(), Some(ACCOUNT));
    assert_eq!(
        me.arn(),
        Some("arn:aws:iam::111111111111:user/kms-killswitch-operator")
    );
}

fn aws_smithy_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn assume_role_provider_reaches_the_other_account() {
    let sim = start(quiet_world());
    let base = sdk_config(&sim, REGION, ACCESS_KEY_ID, SECRET).await;
    let provider = AssumeRoleProvider::builder(ROLE_ARN)
        .session_name("kms-killswitch")
        .region(Region::new(REGION))
        .configure(&base)
        .build()
        .await;
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(provider)
        .endpoint_url(sim.endpoint_url())
        .load()
        .await;
    let kms = aws_sdk_kms::Client::new(&config);
    let ids: Vec<String> = kms
        .describe_custom_key_stores()
        .send()
        .await
        .unwrap()
        .custom_key_stores()
        .iter()
        .filter_map(|s| s.custom_key_store_id().map(str::to_owned))
        .collect();
    assert_eq!(ids, ["cks-2e1c0000000000001", "cks-2e1e0000000000001"]);
    kms.disconnect_custom_key_store()
        .custom_key_store_id("cks-2e1c0000000000001")
        .send()
        .await
        .unwrap();
    assert_eq!(
        sim.connection_state(OTHER_ACCOUNT, REGION, "cks-2e1c0000000000001")
            .as_deref(),
        Some("DISCONNECTED")
    );
    // A store of the base account is not visible from the role's account.
    let err = kms
        .disconnect_custom_key_store()
        .custom_key_store_id(HSM_EU)
        .send()
        .await
        .unwrap_err();
    assert!(
        err.into_service_error()
            .is_custom_key_store_not_found_exception()
    );

    let who = aws_sdk_sts::Client::new(&config)
        .get_caller_identity()
        .send()
        .await
        .unwrap();
    assert_eq!(who.account(), Some(OTHER_ACCOUNT));
    let log = sim.requests();
    assert!(log.iter().any(|r| r.service == "sts"
        && r.operation == "AssumeRole"
        && r.account.as_deref() == Some(ACCOUNT)));
    assert!(log.iter().any(|r| r.operation == "DisconnectCustomKeyStore"
        && r.account.as_deref() == Some(OTHER_ACCOUNT)));
}

#[tokio::test]
async fn only_declared_principals_may_assume_a_role() {
    let mut world = quiet_world();
    world.roles.push(Role {
        arn: "arn:aws:iam::222222222222:role/someone-else".into(),
        assumable_by: vec!["AKIDSOMEONEELSE".into()],
    });
    let sim = start(world);
    let sts = sts(&sim, REGION).await;
    for role in [
        "arn:aws:iam::222222222222:role/someone-else",
        "arn:aws:iam::333333333333:role/missing",
    ] {
        let err = sts
            .assume_role()
            .role_arn(role)
            .role_session_name("s1")
            .send()
            .await
            .unwrap_err();
        assert_eq!(code(&err).as_deref(), Some("AccessDenied"));
        assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(403));
    }
    let err = sts
        .assume_role()
        .role_arn(ROLE_ARN)
        .role_session_name("bad name!")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("ValidationError"));
}

#[tokio::test]
async fn expired_and_forged_session_credentials_are_refused() {
    let mut world = quiet_world();
    // Sessions that end as soon as they start.
    world.settings.session_duration_seconds = 0;
    let sim = start(world);
    let out = sts(&sim, REGION)
        .await
        .assume_role()
        .role_arn(ROLE_ARN)
        .role_session_name("short")
        .send()
        .await
        .unwrap();
    let temp = out.credentials().unwrap();
    let expired = Credentials::new(
        temp.access_key_id(),
        temp.secret_access_key(),
        Some(temp.session_token().to_owned()),
        None,
        "expired",
    );
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(expired)
        .endpoint_url(sim.endpoint_url())
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await;
    let err = aws_sdk_kms::Client::new(&config)
        .describe_custom_key_stores()
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("ExpiredTokenException"));

    let forged = Credentials::new(
        temp.access_key_id(),
        temp.secret_access_key(),
        Some("forged-token".to_owned()),
        None,
        "forged",
    );
    let config = config
        .into_builder()
        .credentials_provider(aws_sdk_kms::config::SharedCredentialsProvider::new(forged))
        .build();
    let err = aws_sdk_kms::Client::new(&config)
        .describe_custom_key_stores()
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("UnrecognizedClientException"));
}

#[tokio::test]
async fn sts_refuses_a_wrong_secret_with_an_xml_error() {
    let sim = start(quiet_world());
    let sts = aws_sdk_sts::Client::new(&sdk_config(&sim, REGION, ACCESS_KEY_ID, "wrong").await);
    let err = sts.get_caller_identity().send().await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("SignatureDoesNotMatch"));
    let _ = World::demo();
}

#[tokio::test]
async fn forgotten_sessions_are_refused_as_unrecognized_until_the_role_is_assumed_again() {
    let sim = start(quiet_world());
    let assume = || async {
        sts(&sim, REGION)
            .await
            .assume_role()
            .role_arn(ROLE_ARN)
            .role_session_name("before-outage")
            .send()
            .await
            .unwrap()
    };
    let session = |out: &aws_sdk_sts::operation::assume_role::AssumeRoleOutput| {
        let temp = out.credentials().unwrap();
        Credentials::new(
            temp.access_key_id(),
            temp.secret_access_key(),
            Some(temp.session_token().to_owned()),
            None,
            "session",
        )
    };
    let kms_with = |credentials: Credentials| {
        let url = sim.endpoint_url();
        async move {
            let config = aws_config::defaults(BehaviorVersion::latest())
                .region(Region::new(REGION))
                .credentials_provider(credentials)
                .endpoint_url(url)
                .retry_config(aws_config::retry::RetryConfig::disabled())
                .load()
                .await;
            aws_sdk_kms::Client::new(&config)
        }
    };
    let before = session(&assume().await);
    let kms = kms_with(before.clone()).await;
    kms.describe_custom_key_stores().send().await.unwrap();

    assert_eq!(sim.forget_sessions(), 1);
    let err = kms.describe_custom_key_stores().send().await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("UnrecognizedClientException"));
    let sts_config = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(before)
        .endpoint_url(sim.endpoint_url())
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await;
    let err = aws_sdk_sts::Client::new(&sts_config)
        .get_caller_identity()
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("InvalidClientTokenId"));

    // A new session works at once.
    let after = kms_with(session(&assume().await)).await;
    after.describe_custom_key_stores().send().await.unwrap();
}
