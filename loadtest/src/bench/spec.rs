//! Bench scenario files (`loadtest/scenarios/*.yaml`): the fleet the
//! generator simulates, the targets, which Deployment goes to which target,
//! the traffic and the time bounds. Pure: parsing and routing only.
//!
//! ```yaml
//! name: routed
//! fleet: {clusters: 10, deployments: 20}   # generator scenario (docs/loadtest.md), camelCase
//! targets: 20
//! targetsPerDeployment: 1                   # default: every target
//! deadTargets: [2]                          # targets that refuse connections; default none
//! traffic: {samples: 1500000, rate: 100000, connections: 4, samplesPerRequest: 2000}
//! batch: 2000                               # maxSamplesPerSend / -remoteWrite.maxRowsPerBlock
//! protocol: V2                              # Fanout's targets get remote-write 2.0; default V1
//! drainTimeout: 30s
//! targetDelay: 300ms                        # every live target answers after this; default 0
//! targetJitter: 50ms                        # ... plus 0 to this, uniformly; default 0
//! outage: {status: 503, for: 30s}           # every live target answers 503 for the first 30 s
//!                                           # (429/503 with `Retry-After: 1`; `retryAfter: false`: without)
//! ```
//!
//! The target behaviour (`targetDelay`, `targetJitter`, `outage`) is the
//! sinks', so both gateways meet the same endpoints; the outage starts when
//! the traffic does (after the gateway is ready).
//!
//! Routing: Deployment `g` (global index `cluster × deployments + d`) goes to
//! targets `(g + j) mod targets` for `j < targetsPerDeployment`, so every
//! target gets the same number of Deployments when the numbers divide.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::scenario::Scenario;

/// Why a scenario file is not usable.
#[derive(Debug, thiserror::Error)]
#[error("scenario {file}: {what}")]
pub struct SpecError {
    /// The file (or `<inline>`).
    pub file: String,
    /// What is wrong, and where.
    pub what: String,
}

/// Offered load, the same for every gateway under test.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Traffic {
    /// Samples to send (a fixed amount keeps runs comparable).
    pub samples: u64,
    /// Samples per second (ceiling); `None`: as fast as possible.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Generator connections.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Samples per request.
    #[serde(default = "default_per_request")]
    pub samples_per_request: usize,
    /// Hard bound on the sending phase, whatever the rate.
    #[serde(default = "default_max_duration", with = "duration_str")]
    pub max_duration: Duration,
}

fn default_connections() -> usize {
    4
}
fn default_per_request() -> usize {
    2000
}
fn default_max_duration() -> Duration {
    Duration::from_secs(60)
}
fn default_batch() -> usize {
    2000
}
fn default_drain() -> Duration {
    Duration::from_secs(30)
}

/// An outage of every live target: this status instead of recording, from
/// the start of the traffic for `for`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    /// The status answered (an error status: 400 to 599).
    pub status: u16,
    /// How long.
    #[serde(rename = "for", with = "duration_str")]
    pub duration: Duration,
    /// A 429 or 503 carries `Retry-After: 1` (default true).
    #[serde(rename = "retryAfter", default = "yes")]
    pub retry_after: bool,
}

fn yes() -> bool {
    true
}

/// The raw file shape; [`BenchSpec::parse`] validates it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSpec {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    fleet: serde_json::Map<String, serde_json::Value>,
    targets: usize,
    #[serde(default)]
    targets_per_deployment: Option<usize>,
    #[serde(default)]
    dead_targets: Vec<usize>,
    traffic: Traffic,
    #[serde(default = "default_batch")]
    batch: usize,
    #[serde(default)]
    protocol: Protocol,
    #[serde(default = "default_drain", with = "duration_str")]
    drain_timeout: Duration,
    #[serde(default, with = "duration_str")]
    target_delay: Duration,
    #[serde(default, with = "duration_str")]
    target_jitter: Duration,
    #[serde(default)]
    outage: Option<Outage>,
}

/// The remote-write version Fanout's targets are configured with
/// (`delivery.protocol`); vmagent always sends 1.0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    /// Remote-write 1.0.
    #[default]
    V1,
    /// Remote-write 2.0.
    V2,
}

/// A validated bench scenario.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BenchSpec {
    /// Short name, used in tables and file names.
    pub name: String,
    /// One line on what it measures.
    pub description: String,
    /// The generator's fleet.
    pub fleet: Scenario,
    /// Number of targets (sinks, or dead ports).
    pub targets: usize,
    /// Targets each Deployment is exported to.
    pub targets_per_deployment: usize,
    /// Targets that refuse connections (nothing listens).
    pub dead_targets: BTreeSet<usize>,
    /// Offered load.
    pub traffic: Traffic,
    /// Samples per outgoing request, for both gateways.
    pub batch: usize,
    /// The protocol of Fanout's targets.
    pub protocol: Protocol,
    /// How long to wait for delivery after the generator stopped.
    #[serde(with = "duration_str")]
    pub drain_timeout: Duration,
    /// Every live target answers after this long.
    #[serde(with = "duration_str")]
    pub target_delay: Duration,
    /// ... plus 0 to this long, uniformly.
    #[serde(with = "duration_str")]
    pub target_jitter: Duration,
    /// Every live target answers an error status for a while from the start
    /// of the traffic.
    pub outage: Option<Outage>,
}

impl BenchSpec {
    /// Parses and validates a scenario file's text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<BenchSpec, SpecError> {
        let err = |what: String| SpecError {
            file: file.to_owned(),
            what,
        };
        let raw: RawSpec = serde_yaml_ng::from_str(text).map_err(|e| err(e.to_string()))?;
        // The fleet is the generator's Scenario with defaults for what the file omits.
        let mut fleet =
            serde_json::to_value(Scenario::default()).map_err(|e| err(e.to_string()))?;
        let obj = fleet
            .as_object_mut()
            .ok_or_else(|| err("fleet: not an object".into()))?;
        for (k, v) in raw.fleet {
            if !obj.contains_key(&k) {
                let known: Vec<&str> = obj.keys().map(String::as_str).collect();
                return Err(err(format!(
                    "fleet: unknown key {k:?} (known: {})",
                    known.join(", ")
                )));
            }
            obj.insert(k, v);
        }
        let fleet: Scenario =
            serde_json::from_value(fleet).map_err(|e| err(format!("fleet: {e}")))?;
        fleet.validate().map_err(|e| err(format!("fleet: {e}")))?;
        if raw.name.is_empty()
            || !raw
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(err(format!(
                "name {:?}: use letters, digits, '-' and '_'",
                raw.name
            )));
        }
        if raw.targets == 0 {
            return Err(err("targets: at least 1".into()));
        }
        let per = raw.targets_per_deployment.unwrap_or(raw.targets);
        if per == 0 || per > raw.targets {
            return Err(err(format!(
                "targetsPerDeployment {per}: must be 1 to targets ({})",
                raw.targets
            )));
        }
        let mut dead = BTreeSet::new();
        for &t in &raw.dead_targets {
            if t >= raw.targets {
                return Err(err(format!(
                    "deadTargets: {t} is not a target (0 to {})",
                    raw.targets - 1
                )));
            }
            dead.insert(t);
        }
        if dead.len() == raw.targets {
            return Err(err("deadTargets: at least one target must be alive".into()));
        }
        if raw.traffic.samples == 0 || raw.traffic.connections == 0 {
            return Err(err(
                "traffic: samples and connections must be positive".into()
            ));
        }
        if raw.traffic.samples_per_request == 0 || raw.batch == 0 {
            return Err(err(
                "traffic.samplesPerRequest and batch must be positive".into()
            ));
        }
        if raw.traffic.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
            return Err(err("traffic.rate: must be positive".into()));
        }
        if let Some(o) = raw.outage {
            if !(400..=599).contains(&o.status) {
                return Err(err(format!(
                    "outage.status {}: an error status (400 to 599), e.g. 503",
                    o.status
                )));
            }
            if o.duration.is_zero() {
                return Err(err("outage.for: must be longer than 0s".into()));
            }
        }
        Ok(BenchSpec {
            name: raw.name,
            description: raw.description,
            fleet,
            targets: raw.targets,
            targets_per_deployment: per,
            dead_targets: dead,
            traffic: raw.traffic,
            batch: raw.batch,
            protocol: raw.protocol,
            drain_timeout: raw.drain_timeout,
            target_delay: raw.target_delay,
            target_jitter: raw.target_jitter,
            outage: raw.outage,
        })
    }

    /// Number of Deployments in the fleet.
    pub fn deployment_count(&self) -> usize {
        (self.fleet.clusters * self.fleet.deployments) as usize
    }

    /// Global index of Deployment `d` of `cluster`.
    pub fn global(&self, cluster: u32, d: u32) -> usize {
        (cluster * self.fleet.deployments + d) as usize
    }

    /// The targets of Deployment `d` of `cluster`, ascending.
    pub fn targets_of(&self, cluster: u32, d: u32) -> Vec<usize> {
        let g = self.global(cluster, d);
        let mut t: Vec<usize> = (0..self.targets_per_deployment)
            .map(|j| (g + j) % self.targets)
            .collect();
        t.sort_unstable();
        t
    }

    /// Every (cluster, Deployment) index pair routed to `target`.
    pub fn deployments_of(&self, target: usize) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        for c in 0..self.fleet.clusters {
            for d in 0..self.fleet.deployments {
                if self.targets_of(c, d).contains(&target) {
                    out.push((c, d));
                }
            }
        }
        out
    }

    /// Whether every Deployment goes to every target.
    pub fn all_to_all(&self) -> bool {
        self.targets_per_deployment == self.targets
    }

    /// The sink (target) name of target `t`.
    pub fn target_name(t: usize) -> String {
        format!("t{t}")
    }
}

/// Durations as the strings the rest of Fanout uses (`500ms`, `30s`, `2m`).
pub mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    use fanout_proto::units::{format_duration, parse_duration};

    /// serde `serialize_with`.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    /// serde `deserialize_with`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTED: &str = "
name: routed
description: 200 Deployments over 20 targets
fleet: {clusters: 10, deployments: 20, dags: 2, tasks: 2}
targets: 20
targetsPerDeployment: 1
traffic: {samples: 1000, rate: 5000}
drainTimeout: 5s
";

    #[test]
    fn parses_with_defaults() {
        let s = BenchSpec::parse("routed.yaml", ROUTED).unwrap();
        assert_eq!(s.name, "routed");
        assert_eq!(s.fleet.clusters, 10);
        assert_eq!(s.fleet.dags, 2);
        assert_eq!(s.fleet.pods, Scenario::default().pods);
        assert_eq!(s.deployment_count(), 200);
        assert_eq!(s.traffic.connections, 4);
        assert_eq!(s.traffic.samples_per_request, 2000);
        assert_eq!(s.batch, 2000);
        assert_eq!(s.drain_timeout, Duration::from_secs(5));
        assert!(s.dead_targets.is_empty());
        assert!(!s.all_to_all());
    }

    #[test]
    fn routing_spreads_evenly() {
        let s = BenchSpec::parse("routed.yaml", ROUTED).unwrap();
        for t in 0..20 {
            assert_eq!(s.deployments_of(t).len(), 10, "target {t}");
        }
        assert_eq!(s.targets_of(0, 0), vec![0]);
        assert_eq!(s.targets_of(1, 3), vec![3]);
        assert_eq!(s.targets_of(1, 0), vec![0]);
    }

    #[test]
    fn all_targets_by_default() {
        let s = BenchSpec::parse(
            "f.yaml",
            "name: fanout-3\ntargets: 3\ndeadTargets: [1]\ntraffic: {samples: 10}\n",
        )
        .unwrap();
        assert!(s.all_to_all());
        assert_eq!(s.targets_of(2, 4), vec![0, 1, 2]);
        assert_eq!(s.dead_targets, BTreeSet::from([1]));
    }

    #[test]
    fn rejects_what_cannot_run() {
        for (text, needle) in [
            ("name: x\ntargets: 0\ntraffic: {samples: 1}\n", "targets"),
            (
                "name: x\ntargets: 2\ntargetsPerDeployment: 3\ntraffic: {samples: 1}\n",
                "targetsPerDeployment",
            ),
            (
                "name: x\ntargets: 2\ndeadTargets: [2]\ntraffic: {samples: 1}\n",
                "deadTargets",
            ),
            (
                "name: x\ntargets: 1\ndeadTargets: [0]\ntraffic: {samples: 1}\n",
                "alive",
            ),
            (
                "name: x\ntargets: 1\nfleet: {clusterz: 3}\ntraffic: {samples: 1}\n",
                "clusterz",
            ),
            ("name: x\ntargets: 1\ntraffic: {samples: 0}\n", "samples"),
            ("name: x y\ntargets: 1\ntraffic: {samples: 1}\n", "name"),
            (
                "name: x\ntargets: 1\ntraffic: {samples: 1}\ndrainTimeout: soon\n",
                "duration",
            ),
            (
                "name: x\ntargets: 1\ntraffic: {samples: 1}\nextra: 1\n",
                "extra",
            ),
            (
                "name: x\ntargets: 1\nfleet: {clusters: 5000}\ntraffic: {samples: 1}\n",
                "fleet",
            ),
        ] {
            let e = BenchSpec::parse("bad.yaml", text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
            assert!(e.starts_with("scenario bad.yaml: "), "{e}");
        }
    }

    /// The scenario files shipped in `loadtest/scenarios/`.
    fn shipped(name: &str) -> BenchSpec {
        let path = format!("{}/scenarios/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        let s = BenchSpec::parse(&path, &text).unwrap();
        assert_eq!(s.name, name, "{path}: name is the file name");
        s
    }

    #[test]
    fn every_shipped_scenario_parses() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                shipped(p.file_stem().unwrap().to_str().unwrap());
                n += 1;
            }
        }
        assert!(n >= 8, "{n} scenario files");
    }

    #[test]
    fn fanout_scenarios_share_the_fleet_and_differ_in_targets() {
        let base = shipped("fanout-3");
        for (name, targets) in [("fanout-1", 1), ("fanout-10", 10)] {
            let s = shipped(name);
            assert_eq!(s.fleet, base.fleet, "{name}");
            assert_eq!(s.traffic, base.traffic, "{name}");
            assert_eq!((s.targets, s.all_to_all()), (targets, true), "{name}");
            assert!(s.dead_targets.is_empty());
        }
        let sat = shipped("saturation-fanout-3");
        assert_eq!(sat.fleet, base.fleet);
        assert_eq!(sat.deployment_count(), 20);
        assert_eq!((sat.targets, sat.all_to_all()), (3, true));
        assert_eq!(sat.traffic.connections, 8);
        assert_eq!(sat.traffic.samples_per_request, 1000);
        assert_eq!(sat.traffic.rate, None);
    }

    #[test]
    fn routed_dead_is_routed_alive_with_one_dead_target() {
        let dead = shipped("routed-dead");
        let alive = shipped("routed-alive");
        let routed = shipped("routed");
        assert_eq!(dead.fleet, routed.fleet);
        assert_eq!(dead.dead_targets.len(), 1);
        assert!(alive.dead_targets.is_empty());
        assert_eq!((dead.targets, dead.targets_per_deployment), (20, 1));
        // At least 150k samples/s for 60 s.
        assert_eq!(dead.traffic.samples, 9_000_000);
        assert_eq!(dead.traffic.rate, Some(150_000.0));
        assert!(dead.traffic.max_duration >= Duration::from_secs(60));
        assert!(dead.drain_timeout >= Duration::from_secs(60));
        // Everything else equal.
        let strip = |s: &BenchSpec| BenchSpec {
            name: String::new(),
            description: String::new(),
            dead_targets: BTreeSet::new(),
            ..s.clone()
        };
        assert_eq!(strip(&dead), strip(&alive));
    }

    #[test]
    fn target_behaviour_and_interleaving_keys() {
        let s = BenchSpec::parse(
            "far.yaml",
            "name: far\nfleet: {deploymentsPerRequest: 5, seriesPerDeployment: 10}\ntargets: 1\n\
             traffic: {samples: 10}\ntargetDelay: 300ms\ntargetJitter: 50ms\n\
             outage: {status: 503, for: 30s}\n",
        )
        .unwrap();
        assert_eq!(s.target_delay, Duration::from_millis(300));
        assert_eq!(s.target_jitter, Duration::from_millis(50));
        assert_eq!(
            s.outage,
            Some(Outage {
                status: 503,
                duration: Duration::from_secs(30),
                retry_after: true,
            })
        );
        assert_eq!(s.fleet.deployments_per_request, 5);
        assert_eq!(s.fleet.series_limit, Some(10));
        assert_eq!(s.fleet.series_per_deployment(), 10);
        // Defaults: no delay, no outage, today's order, every series.
        let d = BenchSpec::parse("d.yaml", "name: d\ntargets: 1\ntraffic: {samples: 1}\n").unwrap();
        assert_eq!(
            (d.target_delay, d.target_jitter, d.outage),
            (Duration::ZERO, Duration::ZERO, None)
        );
        assert_eq!(
            (d.fleet.deployments_per_request, d.fleet.series_limit),
            (1, None)
        );
        for (text, needle) in [
            ("outage: {status: 200, for: 30s}", "outage.status 200"),
            ("outage: {status: 503, for: 0s}", "outage.for"),
            ("outage: {status: 503}", "for"),
            ("outage: {status: 503, for: 1s, when: now}", "when"),
            ("targetDelay: slow", "duration"),
            ("fleet: {deploymentsPerRequest: 6}", "deploymentsPerRequest"),
            ("fleet: {seriesPerDeployment: 0}", "seriesPerDeployment"),
        ] {
            let text = format!("name: x\ntargets: 1\ntraffic: {{samples: 1}}\n{text}\n");
            let e = BenchSpec::parse("bad.yaml", &text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn far_dense_and_outage_scenarios_have_their_shape() {
        let far = shipped("far-300ms");
        assert_eq!(far.deployment_count(), 1);
        assert_eq!(far.targets, 1);
        assert_eq!(
            (far.traffic.samples, far.traffic.rate),
            (600_000, Some(15_000.0))
        );
        assert_eq!(far.target_delay, Duration::from_millis(300));
        assert!(far.target_jitter <= Duration::from_millis(50));
        assert_eq!(
            (far.batch, far.drain_timeout),
            (2000, Duration::from_secs(60))
        );
        for (name, targets) in [("dense-100", 10), ("dense-100-fanout-1", 1)] {
            let d = shipped(name);
            let f = &d.fleet;
            assert_eq!(
                (f.deployments, f.series_per_deployment()),
                (100, 10),
                "{name}"
            );
            assert_eq!((d.targets, d.all_to_all()), (targets, true), "{name}");
            assert_eq!(d.traffic.rate, None, "{name}: saturation");
            assert_eq!((d.traffic.connections, d.batch), (8, 2000), "{name}");
            // A request is one round of a cluster: 1,000 series of 100 Deployments.
            assert_eq!(d.traffic.samples_per_request as u64, f.series_per_cluster());
            let deps: BTreeSet<u32> = (0..1000).map(|i| f.deployment_of(i)).collect();
            assert_eq!(deps.len(), 100, "{name}");
            assert!(
                f.deployment_id_rule().is_some(),
                "{name}: vmagent gets one rule"
            );
        }
        assert_eq!(
            strip_targets(&shipped("dense-100")),
            strip_targets(&shipped("dense-100-fanout-1"))
        );
        let outage = shipped("outage-30s");
        assert_eq!(outage.fleet, shipped("fanout-3").fleet);
        assert_eq!(outage.deployment_count(), 20);
        assert_eq!(outage.targets, 3);
        assert_eq!(outage.traffic.rate, Some(30_000.0));
        assert_eq!(outage.traffic.samples, 1_800_000);
        assert_eq!(
            outage.outage,
            Some(Outage {
                status: 503,
                duration: Duration::from_secs(30),
                retry_after: true,
            })
        );
        let bare = shipped("outage-30s-no-retry-after");
        assert_eq!(
            bare.outage.map(|o| o.retry_after),
            Some(false),
            "no Retry-After"
        );
        assert_eq!(
            strip_targets(&BenchSpec {
                outage: outage.outage,
                ..bare.clone()
            }),
            strip_targets(&outage),
            "otherwise outage-30s"
        );
        assert_eq!(outage.drain_timeout, Duration::from_secs(120));
    }

    /// A spec without its name, description and targets.
    fn strip_targets(s: &BenchSpec) -> BenchSpec {
        BenchSpec {
            name: String::new(),
            description: String::new(),
            targets: 0,
            targets_per_deployment: 0,
            ..s.clone()
        }
    }

    #[test]
    fn durations_round_trip() {
        use fanout_proto::units::{format_duration as format, parse_duration as parse};
        for s in ["500ms", "30s", "2m"] {
            let d = parse(s).unwrap();
            assert_eq!(parse(&format(d)).unwrap(), d);
        }
        assert!(parse("3w").is_err());
    }
}
