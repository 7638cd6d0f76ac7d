//! Building PutMetricData requests: store window → datums → batches, as pure functions.
//!
//! Limits: ≤ 1000 datums and ≤ 1 MB per call, ≤ 150 distinct values per datum. Batches are plain
//! serde data so unsent ones can sit in the spool and be replayed after a restart.

use crate::telemetry::store::FlushWindow;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit, StatisticSet};
use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

pub const MAX_DATUMS_PER_CALL: usize = 1000;
pub const MAX_BYTES_PER_CALL: usize = 1_000_000;
pub const MAX_VALUES_PER_DATUM: usize = 150;
/// Room for `Action=PutMetricData&Version=…&Namespace=…` and signing headers' body share.
const CALL_OVERHEAD: usize = 256;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DatumValue {
    Stats {
        min: f64,
        max: f64,
        sum: f64,
        count: f64,
    },
    Distribution {
        values: Vec<f64>,
        counts: Vec<f64>,
    },
}

/// One CloudWatch datum as plain data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Datum {
    pub name: String,
    pub unit: String,
    /// (CloudWatch dimension name, value)
    pub dims: Vec<(String, String)>,
    pub timestamp_ms: i64,
    pub value: DatumValue,
    pub high_resolution: bool,
}

/// One PutMetricData call's worth of datums (the spool's record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub created_ms: i64,
    pub datums: Vec<Datum>,
}

pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Gauges/counters become StatisticSets; latency distributions become Values/Counts datums of
/// at most 150 values each (CloudWatch merges datums of one series, so percentiles still work).
pub fn datums_from_window(
    window: &FlushWindow,
    at: SystemTime,
    high_resolution: bool,
) -> Vec<Datum> {
    let ts = unix_ms(at);
    let dims = |k: &crate::telemetry::SeriesKey| -> Vec<(String, String)> {
        k.dims
            .iter()
            .map(|(d, v)| (d.cloudwatch().to_string(), v.clone()))
            .collect()
    };
    let mut out = Vec::with_capacity(window.stats.len() + window.distributions.len());
    // The store refuses NaN/±Inf, but one non-finite number makes CloudWatch reject the whole
    // call: never let one through (logged rate-limited; the store counted its own refusals).
    let mut non_finite = 0u64;
    for (key, s) in &window.stats {
        if ![s.min, s.max, s.sum, s.count].iter().all(|v| v.is_finite()) {
            non_finite += 1;
            continue;
        }
        out.push(Datum {
            name: key.metric.to_string(),
            unit: key.def().unit.cloudwatch().to_string(),
            dims: dims(key),
            timestamp_ms: ts,
            value: DatumValue::Stats {
                min: s.min,
                max: s.max,
                sum: s.sum,
                count: s.count,
            },
            high_resolution,
        });
    }
    for (key, pairs) in &window.distributions {
        let finite: Vec<(f64, f64)> = pairs
            .iter()
            .copied()
            .filter(|(v, c)| v.is_finite() && c.is_finite())
            .collect();
        non_finite += (pairs.len() - finite.len()) as u64;
        for chunk in finite.chunks(MAX_VALUES_PER_DATUM) {
            out.push(Datum {
                name: key.metric.to_string(),
                unit: key.def().unit.cloudwatch().to_string(),
                dims: dims(key),
                timestamp_ms: ts,
                value: DatumValue::Distribution {
                    values: chunk.iter().map(|(v, _)| *v).collect(),
                    counts: chunk.iter().map(|(_, c)| *c).collect(),
                },
                high_resolution,
            });
        }
    }
    crate::telemetry::drops::record(
        None,
        crate::telemetry::drops::sink::CLOUDWATCH,
        crate::telemetry::drops::reason::NON_FINITE,
        non_finite,
    );
    out
}

/// The fleet copies of `metrics`: every datum of one metric (all GPUs of the host) merged into
/// one StatisticSet whose only dimension is `AutoScalingGroupName` — what the CloudWatch
/// agent's `aggregation_dimensions = [["AutoScalingGroupName"]]` publishes. CloudWatch then
/// merges the hosts' sets, so the group's Average is over every host (and GPU) of the group.
pub fn aggregate_by_group(datums: &[Datum], group: &str, metrics: &[&str]) -> Vec<Datum> {
    let mut out = Vec::new();
    for metric in metrics {
        let mut merged: Option<Datum> = None;
        for d in datums.iter().filter(|d| d.name == *metric) {
            let DatumValue::Stats {
                min,
                max,
                sum,
                count,
            } = d.value
            else {
                continue;
            };
            match &mut merged {
                None => {
                    merged = Some(Datum {
                        dims: vec![("AutoScalingGroupName".to_string(), group.to_string())],
                        ..d.clone()
                    })
                }
                Some(m) => {
                    if let DatumValue::Stats {
                        min: mmin,
                        max: mmax,
                        sum: msum,
                        count: mcount,
                    } = &mut m.value
                    {
                        *mmin = mmin.min(min);
                        *mmax = mmax.max(max);
                        *msum += sum;
                        *mcount += count;
                    }
                }
            }
        }
        out.extend(merged);
    }
    out
}

/// Upper bound of a datum's size in the awsQuery form body (`MetricData.member.N.…=…&`).
pub fn encoded_size(d: &Datum) -> usize {
    // Longest key prefix "MetricData.member.1000.Dimensions.member.30.Value=" is < 56 bytes.
    const FIELD: usize = 56;
    const NUMBER: usize = 24;
    let mut n = FIELD + d.name.len() + FIELD + d.unit.len() + FIELD + NUMBER;
    n += d
        .dims
        .iter()
        .map(|(k, v)| 2 * FIELD + k.len() + 3 * v.len())
        .sum::<usize>();
    n += match &d.value {
        DatumValue::Stats { .. } => 4 * (FIELD + NUMBER),
        DatumValue::Distribution { values, counts } => {
            (values.len() + counts.len()) * (FIELD + NUMBER)
        }
    };
    if d.high_resolution {
        n += FIELD + 2;
    }
    n
}

/// Splits datums into calls of ≤ 1000 datums and ≤ 1 MB, keeping order.
pub fn batches(datums: Vec<Datum>, created: SystemTime) -> Vec<Batch> {
    let created_ms = unix_ms(created);
    let mut out = Vec::new();
    let mut current: Vec<Datum> = Vec::new();
    let mut bytes = CALL_OVERHEAD;
    for d in datums {
        let size = encoded_size(&d);
        if !current.is_empty()
            && (current.len() == MAX_DATUMS_PER_CALL || bytes + size > MAX_BYTES_PER_CALL)
        {
            out.push(Batch {
                created_ms,
                datums: std::mem::take(&mut current),
            });
            bytes = CALL_OVERHEAD;
        }
        bytes += size;
        current.push(d);
    }
    if !current.is_empty() {
        out.push(Batch {
            created_ms,
            datums: current,
        });
    }
    out
}

/// The SDK's datum for one plain datum.
pub fn to_sdk(d: &Datum) -> MetricDatum {
    let mut b = MetricDatum::builder()
        .metric_name(&d.name)
        .unit(StandardUnit::from(d.unit.as_str()))
        .timestamp(aws_sdk_cloudwatch::primitives::DateTime::from_millis(
            d.timestamp_ms,
        ))
        .set_dimensions(Some(
            d.dims
                .iter()
                .map(|(k, v)| Dimension::builder().name(k).value(v).build())
                .collect(),
        ));
    b = match &d.value {
        DatumValue::Stats {
            min,
            max,
            sum,
            count,
        } => b.statistic_values(
            StatisticSet::builder()
                .minimum(*min)
                .maximum(*max)
                .sum(*sum)
                .sample_count(*count)
                .build(),
        ),
        DatumValue::Distribution { values, counts } => b
            .set_values(Some(values.clone()))
            .set_counts(Some(counts.clone())),
    };
    if d.high_resolution {
        b = b.storage_resolution(1);
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::SeriesKey;
    use crate::telemetry::catalog::Dim;
    use crate::telemetry::store::{FlushWindow, StatSet};
    use std::time::Duration;

    fn stat(name: &str, i: usize) -> Datum {
        Datum {
            name: name.to_string(),
            unit: "Percent".to_string(),
            dims: vec![("Host".into(), "h".into()), ("GPU".into(), i.to_string())],
            timestamp_ms: 1,
            value: DatumValue::Stats {
                min: 1.0,
                max: 2.0,
                sum: 3.0,
                count: 2.0,
            },
            high_resolution: false,
        }
    }

    fn dist(values: usize) -> Datum {
        Datum {
            name: "ModelLatency".into(),
            unit: "Milliseconds".into(),
            dims: vec![("Host".into(), "h".into()), ("Model".into(), "m".into())],
            timestamp_ms: 1,
            value: DatumValue::Distribution {
                values: (0..values).map(|v| v as f64).collect(),
                counts: vec![1.0; values],
            },
            high_resolution: false,
        }
    }

    #[test]
    fn scaling_metrics_merge_into_one_group_datum() {
        let gpu = |g: &str, v: f64| Datum {
            name: "GPUUtilization".into(),
            unit: "Percent".into(),
            dims: vec![("Host".into(), "h".into()), ("GPU".into(), g.into())],
            timestamp_ms: 5,
            value: DatumValue::Stats {
                min: v,
                max: v + 10.0,
                sum: v * 2.0 + 10.0,
                count: 2.0,
            },
            high_resolution: false,
        };
        let datums = vec![gpu("0", 50.0), gpu("1", 90.0), stat("Other", 0)];
        let fleet = aggregate_by_group(&datums, "g", &["GPUUtilization", "HostCPUUtilization"]);
        assert_eq!(fleet.len(), 1, "no CPU datum, no CPU copy");
        assert_eq!(
            fleet[0].dims,
            vec![("AutoScalingGroupName".to_string(), "g".to_string())]
        );
        assert_eq!(
            fleet[0].value,
            DatumValue::Stats {
                min: 50.0,
                max: 100.0,
                sum: 110.0 + 190.0,
                count: 4.0
            }
        );
        assert_eq!(
            (fleet[0].timestamp_ms, fleet[0].unit.as_str()),
            (5, "Percent")
        );
    }

    #[test]
    fn batching_table() {
        let t = SystemTime::UNIX_EPOCH;
        // (datums, expected batch sizes)
        let cases: Vec<(Vec<Datum>, Vec<usize>)> = vec![
            (vec![], vec![]),
            (
                (0..10).map(|i| stat("GPUUtilization", i)).collect(),
                vec![10],
            ),
            (
                (0..1000).map(|i| stat("GPUUtilization", i)).collect(),
                vec![1000],
            ),
            (
                (0..1001).map(|i| stat("GPUUtilization", i)).collect(),
                vec![1000, 1],
            ),
            (
                (0..2500).map(|i| stat("GPUUtilization", i)).collect(),
                vec![1000, 1000, 500],
            ),
            // 150-value distributions are ~24 KB each: the byte limit binds before the count.
            ((0..100).map(|_| dist(150)).collect(), vec![40, 40, 20]),
        ];
        for (datums, want) in cases {
            let n = datums.len();
            let got: Vec<usize> = batches(datums, t).iter().map(|b| b.datums.len()).collect();
            assert_eq!(got, want, "{n} datums");
        }
        for b in batches((0..100).map(|_| dist(150)).collect(), t) {
            let size: usize = b.datums.iter().map(encoded_size).sum::<usize>() + CALL_OVERHEAD;
            assert!(size <= MAX_BYTES_PER_CALL);
        }
    }

    #[test]
    fn window_becomes_stat_sets_and_chunked_distributions() {
        let key = SeriesKey::new(
            "GPUUtilization",
            vec![(Dim::Host, "h".into()), (Dim::Gpu, "1".into())],
        );
        let lat = SeriesKey::new(
            "ModelLatency",
            vec![(Dim::Host, "h".into()), (Dim::Model, "m".into())],
        );
        let window = FlushWindow {
            stats: vec![(
                key,
                StatSet {
                    min: 1.0,
                    max: 9.0,
                    sum: 10.0,
                    count: 2.0,
                },
            )],
            distributions: vec![(lat, (0..320).map(|i| (i as f64, 2.0)).collect())],
        };
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let d = datums_from_window(&window, at, true);
        assert_eq!(d.len(), 1 + 3, "320 values → 150 + 150 + 20");
        assert_eq!(
            d[0].dims,
            vec![
                ("Host".to_string(), "h".to_string()),
                ("GPU".to_string(), "1".to_string())
            ]
        );
        assert_eq!(d[0].unit, "Percent");
        assert_eq!(d[0].timestamp_ms, 100_000);
        let sizes: Vec<usize> = d[1..]
            .iter()
            .map(|x| match &x.value {
                DatumValue::Distribution { values, counts } => {
                    assert_eq!(values.len(), counts.len());
                    values.len()
                }
                DatumValue::Stats { .. } => 0,
            })
            .collect();
        assert_eq!(sizes, vec![150, 150, 20]);
        let sdk = to_sdk(&d[0]);
        assert_eq!(sdk.storage_resolution(), Some(1));
        assert_eq!(sdk.statistic_values().and_then(|s| s.maximum()), Some(9.0));
        let sdk = to_sdk(&d[3]);
        assert_eq!(sdk.values().len(), 20);
        assert_eq!(sdk.counts()[0], 2.0);
    }

    #[test]
    fn non_finite_values_never_reach_a_datum() {
        let key = |m| SeriesKey::new(m, vec![(Dim::Host, "h".into()), (Dim::Gpu, "0".into())]);
        let lat = SeriesKey::new(
            "ModelLatency",
            vec![(Dim::Host, "h".into()), (Dim::Model, "m".into())],
        );
        let set = |v: f64| StatSet {
            min: v,
            max: v,
            sum: v,
            count: 1.0,
        };
        let window = FlushWindow {
            stats: vec![
                (key("GPUUtilization"), set(f64::NAN)),
                (key("GPUTemperature"), set(f64::INFINITY)),
                (key("GPUPowerDraw"), set(100.0)),
            ],
            distributions: vec![(lat, vec![(1.0, 2.0), (f64::NAN, 1.0), (3.0, f64::INFINITY)])],
        };
        let d = datums_from_window(&window, SystemTime::UNIX_EPOCH, false);
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(d[0].name, "GPUPowerDraw");
        match &d[1].value {
            DatumValue::Distribution { values, counts } => {
                assert_eq!(
                    (values.as_slice(), counts.as_slice()),
                    (&[1.0][..], &[2.0][..])
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn batch_round_trips_through_the_spool_encoding() {
        let b = Batch {
            created_ms: 5,
            datums: vec![stat("GPUUtilization", 0), dist(3)],
        };
        let bytes = serde_json::to_vec(&b).unwrap();
        assert_eq!(serde_json::from_slice::<Batch>(&bytes).unwrap(), b);
    }
}
