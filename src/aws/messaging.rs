//! The SNS Publish and CloudWatch PutMetricData adapters behind [`Messaging`], for
//! notifications and the heartbeat (issue 13). One attempt per call (the caller retries);
//! errors classified like every other AWS call. Never logs or returns a credential.

use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};

use super::classify::classify;
use super::{AwsClients, AwsError, HeartbeatDatum, Messaging};
use crate::model::Target;

impl Messaging for AwsClients {
    async fn publish(
        &self,
        target: &Target,
        topic_arn: &str,
        subject: &str,
        message: &str,
    ) -> Result<Option<String>, AwsError> {
        let clients = self.clients(target).await;
        let output = clients
            .sns
            .publish()
            .topic_arn(topic_arn)
            .subject(subject)
            .message(message)
            .send()
            .await
            .map_err(|err| {
                self.refused(target, &clients, classify("Publish", &target.region, &err))
            })?;
        Ok(output.message_id().map(str::to_string))
    }

    async fn put_heartbeat(&self, target: &Target, datum: &HeartbeatDatum) -> Result<(), AwsError> {
        let clients = self.clients(target).await;
        let metric = MetricDatum::builder()
            .metric_name(&datum.metric_name)
            .value(1.0)
            .unit(StandardUnit::Count)
            .dimensions(Dimension::builder().name("Host").value(&datum.host).build())
            .build();
        clients
            .cloudwatch
            .put_metric_data()
            .namespace(&datum.namespace)
            .metric_data(metric)
            .send()
            .await
            .map_err(|err| {
                self.refused(
                    target,
                    &clients,
                    classify("PutMetricData", &target.region, &err),
                )
            })?;
        Ok(())
    }
}
