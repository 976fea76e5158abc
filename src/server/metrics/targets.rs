//! The series of each database target (the primary, each standby):
//! `blitz_db_calls_total{target}`, the `api.` calls each answered, and for
//! the standbys `blitz_db_replica_lag_seconds{replica}` and
//! `blitz_db_replica_up{replica}`. The values are counted where the calls
//! run (`db::replica`) and handed over at each scrape ([`Targets::set`]).

use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// One target as a scrape reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetSample {
    /// `primary`, or the standby's name.
    pub target: String,
    /// `api.` calls it answered.
    pub calls: u64,
    /// For a standby: its replay lag (seconds) and whether it serves reads.
    pub replica: Option<(f64, bool)>,
}

/// The last scrape's samples.
#[derive(Debug, Default)]
pub struct Targets {
    view: Mutex<Vec<TargetSample>>,
}

impl Targets {
    /// Hands over the samples of this scrape.
    pub fn set(&self, samples: Vec<TargetSample>) {
        *self.view.lock() = samples;
    }

    /// The collector that writes the samples.
    pub fn collector(self: &Arc<Self>) -> Box<dyn Collector> {
        Box::new(TargetsCollector(self.clone()))
    }
}

#[derive(Debug)]
struct TargetsCollector(Arc<Targets>);

impl Collector for TargetsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let view = self.0.view.lock();
        if view.is_empty() {
            return Ok(()); // a family without samples trips strict parsers
        }
        let mut calls = encoder.encode_descriptor(
            "db_calls",
            "API calls answered, by database target (primary or a standby's name)",
            None,
            MetricType::Counter,
        )?;
        for t in view.iter() {
            calls
                .encode_family(&[("target", t.target.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&t.calls, None)?;
        }
        let standbys: Vec<_> = (view.iter())
            .filter_map(|t| t.replica.map(|r| (t.target.as_str(), r)))
            .collect();
        if standbys.is_empty() {
            return Ok(());
        }
        let mut lag = encoder.encode_descriptor(
            "db_replica_lag_seconds",
            "Replay lag of each standby as its monitor last saw it",
            None,
            MetricType::Gauge,
        )?;
        for (name, (seconds, _)) in &standbys {
            ConstGauge::new(*seconds).encode(lag.encode_family(&[("replica", *name)])?)?;
        }
        let mut up = encoder.encode_descriptor(
            "db_replica_up",
            "1 while a standby serves reads (up and within db.replica_max_lag_ms), else 0",
            None,
            MetricType::Gauge,
        )?;
        for (name, (_, serving)) in &standbys {
            ConstGauge::new(i64::from(*serving))
                .encode(up.encode_family(&[("replica", *name)])?)?;
        }
        Ok(())
    }
}
