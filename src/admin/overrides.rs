//! The operator's overrides, keyed by backend name, and how they layer over
//! discovery. Pure data and rules (no I/O): [`Overrides::layer`] turns what
//! discovery found into what the balancer publishes, [`Overrides::apply`]
//! changes the overrides by one operation.
//!
//! | operation | effect | undone by |
//! |---|---|---|
//! | `add` (address, weight) | a backend discovery does not know; stays until removed | `remove` |
//! | `disable` | listed, but takes no new request; in-flight requests and open tunnels finish | `enable` |
//! | `drain` | weight 0: its clients move to their next candidate, in-flight work finishes | `enable` (or `weight`) |
//! | `weight` N | the weight in effect, whatever discovery says | `weight` again, `enable` of a drain |
//! | `remove` | an added backend is forgotten; a discovered one is left out, whatever discovery says | `enable` (discovered) |
//!
//! An override outlives the backend's absence from discovery: a backend
//! disabled while DNS no longer lists it is still disabled when DNS lists
//! it again, and a removed discovered backend stays out until enabled.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::backend::{DEFAULT_WEIGHT, Endpoint, Listed, MAX_WEIGHT, Source};

/// What an operator set for one backend name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    #[serde(default, skip_serializing_if = "is_false")]
    pub disabled: bool,
    /// A discovered backend left out of the set.
    #[serde(default, skip_serializing_if = "is_false")]
    pub removed: bool,
    /// The weight in effect (0: drained).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Where an added backend is (`None` for discovered ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<SocketAddr>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Override {
    fn is_empty(&self) -> bool {
        *self == Override::default()
    }
}

/// One management operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Add {
        name: String,
        address: SocketAddr,
        weight: u32,
    },
    Disable(String),
    Enable(String),
    Drain(String),
    Weight(String, u32),
    Remove(String),
}

impl Op {
    pub fn name(&self) -> &str {
        match self {
            Op::Add { name, .. } => name,
            Op::Disable(n) | Op::Enable(n) | Op::Drain(n) | Op::Weight(n, _) | Op::Remove(n) => n,
        }
    }
}

/// Why an operation was refused (nothing changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("no backend named {0:?}")]
    NotFound(String),
    #[error("a backend named {0:?} is already listed")]
    Exists(String),
    #[error("weight must be 0..={MAX_WEIGHT}")]
    BadWeight,
}

/// Every override, by backend name (sorted, so the state file is stable).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    #[serde(default)]
    pub backends: BTreeMap<String, Override>,
}

impl Overrides {
    pub fn get(&self, name: &str) -> Option<&Override> {
        self.backends.get(name)
    }

    /// What the balancer publishes: `discovered` with the overrides
    /// applied, plus the added backends discovery does not list.
    pub fn layer(&self, discovered: &[Endpoint]) -> Vec<Listed> {
        let mut out: Vec<Listed> = Vec::with_capacity(discovered.len());
        for e in discovered {
            let o = self.get(&e.name).cloned().unwrap_or_default();
            if o.removed {
                continue;
            }
            out.push(Listed {
                weight: o.weight.unwrap_or(e.weight),
                disabled: o.disabled,
                source: Source::Discovered,
                endpoint: e.clone(),
            });
        }
        for (name, o) in &self.backends {
            let Some(addr) = o.address else { continue };
            if o.removed || discovered.iter().any(|e| e.name == *name) {
                continue;
            }
            let weight = o.weight.unwrap_or(DEFAULT_WEIGHT);
            out.push(Listed {
                endpoint: Endpoint {
                    name: name.clone(),
                    addr,
                    weight,
                },
                weight,
                disabled: o.disabled,
                source: Source::Added,
            });
        }
        out.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        out
    }

    /// Applies `op` given what discovery lists now. Returns what changed
    /// (for the log line and the answer), or `None` when it already was so.
    pub fn apply(&mut self, op: &Op, discovered: &[Endpoint]) -> Result<Option<String>, OpError> {
        let name = op.name().to_owned();
        let in_discovery = discovered.iter().find(|e| e.name == name);
        let current = self.backends.get(&name).cloned().unwrap_or_default();
        let listed = (in_discovery.is_some() || current.address.is_some()) && !current.removed;
        let known = in_discovery.is_some() || self.backends.contains_key(&name);
        let mut next = current.clone();
        let what = match op {
            Op::Add {
                address, weight, ..
            } => {
                if *weight > MAX_WEIGHT {
                    return Err(OpError::BadWeight);
                }
                if listed {
                    return Err(OpError::Exists(name));
                }
                next.removed = false;
                next.weight = Some(*weight);
                if in_discovery.is_none() {
                    next.address = Some(*address);
                }
                format!("added at {address} with weight {weight}")
            }
            _ if !known => return Err(OpError::NotFound(name)),
            Op::Disable(_) => {
                next.disabled = true;
                "disabled".to_owned()
            }
            Op::Enable(_) => {
                next.disabled = false;
                next.removed = false;
                if next.weight == Some(0) {
                    next.weight = None;
                }
                "enabled".to_owned()
            }
            Op::Drain(_) => {
                next.weight = Some(0);
                "draining (weight 0)".to_owned()
            }
            Op::Weight(_, w) => {
                if *w > MAX_WEIGHT {
                    return Err(OpError::BadWeight);
                }
                next.weight = match in_discovery {
                    Some(e) if e.weight == *w && current.address.is_none() => None,
                    _ => Some(*w),
                };
                format!("weight {w}")
            }
            Op::Remove(_) if current.address.is_some() && in_discovery.is_none() => {
                self.backends.remove(&name);
                return Ok(Some("removed".to_owned()));
            }
            Op::Remove(_) => {
                if !listed {
                    return Err(OpError::NotFound(name));
                }
                next.removed = true;
                "removed (until enabled)".to_owned()
            }
        };
        if next == current {
            return Ok(None);
        }
        if next.is_empty() {
            self.backends.remove(&name);
        } else {
            self.backends.insert(name, next);
        }
        Ok(Some(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16) -> Endpoint {
        Endpoint::from_addr(SocketAddr::from(([10, 0, 0, 1], port)), 1)
    }

    fn names(listed: &[Listed]) -> Vec<String> {
        listed.iter().map(|l| l.endpoint.name.clone()).collect()
    }

    #[test]
    fn a_disabled_backend_stays_disabled_when_discovery_lists_it_again() {
        let mut o = Overrides::default();
        let both = [ep(1), ep(2)];
        assert!(
            o.apply(&Op::Disable("10.0.0.1:2".into()), &both)
                .unwrap()
                .is_some()
        );
        // Gone from DNS for a while, then back.
        let l = o.layer(&[ep(1)]);
        assert_eq!(names(&l), ["10.0.0.1:1"]);
        let l = o.layer(&both);
        assert!(l[1].disabled && !l[0].disabled);
        assert_eq!(o.apply(&Op::Disable("10.0.0.1:2".into()), &both), Ok(None));
        o.apply(&Op::Enable("10.0.0.1:2".into()), &both).unwrap();
        assert!(o.backends.is_empty(), "enable leaves nothing behind");
    }

    #[test]
    fn removal_and_addition() {
        let mut o = Overrides::default();
        let d = [ep(1), ep(2)];
        o.apply(&Op::Remove("10.0.0.1:1".into()), &d).unwrap();
        assert_eq!(names(&o.layer(&d)), ["10.0.0.1:2"]);
        assert_eq!(
            o.apply(&Op::Remove("10.0.0.1:1".into()), &d),
            Err(OpError::NotFound("10.0.0.1:1".into()))
        );
        let add = Op::Add {
            name: "127.0.0.1:9".into(),
            address: "127.0.0.1:9".parse().unwrap(),
            weight: 2,
        };
        o.apply(&add, &d).unwrap();
        assert_eq!(
            o.apply(&add, &d),
            Err(OpError::Exists("127.0.0.1:9".into()))
        );
        let l = o.layer(&d);
        assert_eq!(names(&l), ["10.0.0.1:2", "127.0.0.1:9"]);
        assert_eq!((l[1].source, l[1].weight), (Source::Added, 2));
        o.apply(&Op::Drain("127.0.0.1:9".into()), &d).unwrap();
        assert_eq!(o.layer(&d)[1].weight, 0);
        o.apply(&Op::Remove("127.0.0.1:9".into()), &d).unwrap();
        o.apply(&Op::Enable("10.0.0.1:1".into()), &d).unwrap();
        assert_eq!(names(&o.layer(&d)), ["10.0.0.1:1", "10.0.0.1:2"]);
        assert!(o.backends.is_empty());
        assert_eq!(
            o.apply(&Op::Disable("nope:1".into()), &d),
            Err(OpError::NotFound("nope:1".into()))
        );
        assert_eq!(
            o.apply(&Op::Weight("10.0.0.1:1".into(), 101), &d),
            Err(OpError::BadWeight)
        );
    }

    #[test]
    fn the_state_file_format_round_trips_and_refuses_unknown_fields() {
        let mut o = Overrides::default();
        o.apply(&Op::Drain("10.0.0.1:1".into()), &[ep(1)]).unwrap();
        let text = serde_json::to_string(&o).unwrap();
        assert_eq!(text, r#"{"backends":{"10.0.0.1:1":{"weight":0}}}"#);
        assert_eq!(serde_json::from_str::<Overrides>(&text).unwrap(), o);
        assert!(serde_json::from_str::<Overrides>(r#"{"backends":{"a":{"wieght":1}}}"#).is_err());
    }
}
