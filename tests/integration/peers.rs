//! The real local peers the suite relies on, each proven against its real client:
//! moto (AWS SDK) and the Slack receiver (reqwest); libtorch's is in crates/warden-model/tests.

use crate::support::{moto::Moto, slack::SlackReceiver};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_accepts_and_returns_a_cloudwatch_datum() {
    use aws_sdk_cloudwatch::primitives::DateTime;
    use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit, Statistic};

    let moto = Moto::start();
    let client = aws_sdk_cloudwatch::Client::new(&moto.sdk_config().await);
    let now = std::time::SystemTime::now();
    client
        .put_metric_data()
        .namespace("WardenTest")
        .metric_data(
            MetricDatum::builder()
                .metric_name("GPUUtilization")
                .dimensions(Dimension::builder().name("GPU").value("0").build())
                .value(42.5)
                .unit(StandardUnit::Percent)
                .timestamp(DateTime::from(now))
                .build(),
        )
        .send()
        .await
        .expect("PutMetricData against moto");

    let stats = client
        .get_metric_statistics()
        .namespace("WardenTest")
        .metric_name("GPUUtilization")
        .dimensions(Dimension::builder().name("GPU").value("0").build())
        .start_time(DateTime::from(now - Duration::from_secs(600)))
        .end_time(DateTime::from(now + Duration::from_secs(600)))
        .period(60)
        .statistics(Statistic::Maximum)
        .send()
        .await
        .expect("GetMetricStatistics against moto");
    let maxima: Vec<f64> = stats
        .datapoints()
        .iter()
        .filter_map(|d| d.maximum())
        .collect();
    assert_eq!(maxima, vec![42.5]);
}

#[tokio::test]
async fn slack_receiver_records_posts_and_plays_outages() {
    warden::tls::install_crypto_provider();
    let slack = SlackReceiver::start();
    let http = reqwest::Client::new();
    slack.set_status(500);
    let failed = http
        .post(slack.url())
        .body("{\"text\":\"lost\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status().as_u16(), 500);
    slack.set_status(200);
    let ok = http
        .post(slack.url())
        .body("{\"text\":\"hello\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(slack.posts(), vec!["{\"text\":\"hello\"}".to_string()]);
    assert_eq!(slack.attempts(), 2);
}
