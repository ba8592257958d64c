//! The end checks: liveness after healing (a fresh PUT through every cluster, every view
//! converged), every disk agreeing and keeping what clients were told Stored, and no client
//! told "no effect" of a value a disk stores.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use madsim::time::{Instant, sleep};
use replicator_core::{ClusterId, Command, DurableKey, Key, NodeId, Recovered, Value};

use crate::linearizability::{self, Op, PutResult};

use super::clients::put_result;
use super::world::World;
use super::{CALL_TIMEOUT, LIVENESS_WITHIN};

/// After healing: a fresh PUT is stored through every cluster, then every node converges
/// (full membership, nothing accepted left undecided, the same keys).
pub(super) async fn liveness(world: &Arc<World>, healed: Instant) -> Result<(), String> {
    let spec = &world.spec;
    for c in 0..spec.clusters {
        let ix = world.nodes_of_cluster(c)[0];
        let mut attempt = 0;
        loop {
            if healed.elapsed() > LIVENESS_WITHIN {
                return Err(format!(
                    "liveness: no PUT stored through cluster c{c} within {LIVENESS_WITHIN:?} of healing"
                ));
            }
            let Some(running) = world.running(ix) else {
                sleep(Duration::from_millis(100)).await;
                continue;
            };
            // A fresh key each attempt: an attempt that met a settling view (Busy) or a silent
            // node (Unavailable) says nothing about the next.
            attempt += 1;
            let key = format!("probe-c{c}-{attempt}");
            let value = format!("probe-{c}-{attempt}");
            let cmd = Command::Put {
                key: Key::new(&key),
                value: Value::from(value.as_str()),
                request: None,
            };
            let invoked = world.micros();
            let reply = tokio::time::timeout(CALL_TIMEOUT, running.handle.call(cmd)).await;
            let returned = world.micros();
            let result = reply
                .as_ref()
                .map_or(PutResult::Unavailable, |r| put_result(r.clone()));
            world.history.lock().unwrap().push(Op::put(
                1_000 + c as u64,
                key.clone(),
                value.clone().into_bytes(),
                invoked,
                Some(returned),
                result.clone(),
            ));
            match result {
                PutResult::Stored => {
                    world
                        .acknowledged
                        .lock()
                        .unwrap()
                        .insert(key.clone(), value.clone().into_bytes());
                    world.log(format!("liveness: probe PUT {key} stored through c{c}"));
                    break;
                }
                PutResult::Exists { value: v } => {
                    return Err(format!(
                        "liveness: the fresh probe key {key} exists with {:?}",
                        String::from_utf8_lossy(&v)
                    ));
                }
                _ => {
                    world.log(format!("liveness: probe PUT {key} through c{c}: {reply:?}"));
                    if attempt == 5 {
                        log_statuses(world).await;
                    }
                    sleep(Duration::from_millis(200)).await
                }
            }
        }
    }
    let n = world.machines.len();
    loop {
        let mut why = None;
        let mut stored = BTreeSet::new();
        for ix in 0..n {
            let Some(running) = world.running(ix) else {
                why = Some(format!("{} is not running", world.machines[ix].id));
                break;
            };
            let Ok(Some(status)) =
                tokio::time::timeout(Duration::from_secs(1), running.handle.status()).await
            else {
                why = Some(format!("{} does not answer status", world.machines[ix].id));
                break;
            };
            if status.membership.len() != n {
                why = Some(format!(
                    "{} counts {} members of {n}",
                    status.id,
                    status.membership.len()
                ));
                break;
            }
            if status.stats.accepted_undecided > 0 || status.stats.held_messages > 0 {
                why = Some(format!(
                    "{} still holds {} accepted values not known decided, {} held messages",
                    status.id, status.stats.accepted_undecided, status.stats.held_messages
                ));
                break;
            }
            let Some(keys) = running.handle.count_stored_keys() else {
                why = Some(format!("{} cannot count its stored keys", status.id));
                break;
            };
            stored.insert(keys);
        }
        if why.is_none() && stored.len() > 1 {
            why = Some(format!("nodes store different numbers of keys: {stored:?}"));
        }
        match why {
            None => {
                world.log("liveness: every view converged, every accepted value decided");
                return Ok(());
            }
            Some(why) if healed.elapsed() > LIVENESS_WITHIN => {
                return Err(format!(
                    "liveness: not settled {LIVENESS_WITHIN:?} after healing: {why}"
                ));
            }
            Some(_) => sleep(Duration::from_millis(250)).await,
        }
    }
}

/// What every running node says about itself, into the run's log (for failure reports).
async fn log_statuses(world: &World) {
    for ix in 0..world.machines.len() {
        let Some(running) = world.running(ix) else {
            world.log(format!("status {}: not running", world.machines[ix].id));
            continue;
        };
        match tokio::time::timeout(Duration::from_secs(1), running.handle.status()).await {
            Ok(Some(s)) => world.log(format!(
                "status {}: ready {} removed {} members {} digest {:?} peers up {:?} stats {:?}",
                s.id,
                s.ready,
                s.removed,
                s.membership.len(),
                s.membership.digest(),
                s.peers
                    .iter()
                    .filter(|p| p.up)
                    .map(|p| p.peer.as_str())
                    .collect::<Vec<_>>(),
                s.stats
            )),
            _ => world.log(format!("status {}: no answer", world.machines[ix].id)),
        }
    }
}

/// No client was told its PUT had no effect (Busy, Overloaded, not ready, Exists with another
/// value) when its value is what a disk stores: "this one had no effect" must be true.
pub(super) fn check_honest(history: &[Op], disks: &[Recovered]) -> Vec<String> {
    let mut told: BTreeMap<(&str, &[u8]), Vec<&PutResult>> = BTreeMap::new();
    for op in history {
        if let linearizability::OpKind::Put { value, result } = &op.kind {
            told.entry((op.key.as_str(), value.as_slice()))
                .or_default()
                .push(result);
        }
    }
    let mut failures = Vec::new();
    let mut seen = BTreeSet::new();
    for disk in disks {
        for (key, state) in &disk.keys {
            let Some(chosen) = state.stored() else {
                continue;
            };
            if !seen.insert(key.clone()) {
                continue;
            }
            let Some(results) = told.get(&(key.as_str(), chosen.value.as_bytes())) else {
                continue;
            };
            let no_effect = results.iter().all(|r| {
                matches!(
                    r,
                    PutResult::Busy | PutResult::NoEffect | PutResult::Exists { .. }
                )
            });
            if no_effect {
                failures.push(format!(
                    "honesty: key {key} stores {:?}, but every PUT of it was told it had no effect: {results:?}",
                    chosen.value
                ));
            }
        }
    }
    failures.truncate(5);
    failures
}

/// Every disk agrees: no key with two values. Every key a client was told Stored is kept
/// with that value, and how exactly depends on whether the network settled:
/// - `settled` (every node answered with nothing undecided): stored on every disk (catch-up
///   and recovery brought the decision everywhere);
/// - not settled (a liveness failure, reported on its own): stored by some disk, or accepted
///   with that value by a majority of every cluster's disks (chosen; learning it is what did
///   not finish). Anything less lost it: a safety failure whatever the liveness.
pub(super) fn check_disks(world: &World, disks: &[Recovered], settled: bool) -> Vec<String> {
    let mut failures = Vec::new();
    let mut values: BTreeMap<&Key, (&Value, &NodeId)> = BTreeMap::new();
    for (m, disk) in world.machines.iter().zip(disks) {
        for (key, state) in &disk.keys {
            let Some(chosen) = state.stored() else {
                continue;
            };
            match values.get(key) {
                Some((v, other)) if **v != chosen.value => {
                    failures.push(format!(
                        "agreement: key {key} is stored as {:?} on {} and as {:?} on {}",
                        v, other, chosen.value, m.id
                    ));
                }
                Some(_) => {}
                None => {
                    values.insert(key, (&chosen.value, &m.id));
                }
            }
        }
    }
    let mut only_accepted = 0;
    for (key, value) in world.acknowledged.lock().unwrap().iter() {
        let key = Key::new(key);
        let holds = |s: Option<&DurableKey>| {
            s.and_then(DurableKey::value)
                .is_some_and(|v| v.as_bytes() == value.as_slice())
        };
        let stored_by: Vec<&NodeId> = world
            .machines
            .iter()
            .zip(disks)
            .filter(|(_, d)| {
                let s = d.keys.get(&key);
                holds(s) && s.is_some_and(DurableKey::is_stored)
            })
            .map(|(m, _)| &m.id)
            .collect();
        let missing: Vec<String> = world
            .machines
            .iter()
            .zip(disks)
            .filter(|(_, d)| {
                let s = d.keys.get(&key);
                !(holds(s) && s.is_some_and(DurableKey::is_stored))
            })
            .map(|(m, d)| match d.keys.get(&key) {
                None => format!("{} holds nothing", m.id),
                Some(s) => format!("{} holds {s:?}", m.id),
            })
            .collect();
        if missing.is_empty() {
            continue;
        }
        // Chosen without every disk storing it: a majority of every cluster accepted it.
        let mut clusters: BTreeMap<&ClusterId, (usize, usize)> = BTreeMap::new();
        for (m, d) in world.machines.iter().zip(disks) {
            let e = clusters.entry(&m.cluster).or_default();
            e.0 += 1;
            e.1 += usize::from(holds(d.keys.get(&key)));
        }
        let chosen = clusters
            .values()
            .all(|(members, holding)| *holding > members / 2);
        let kept = !settled && (!stored_by.is_empty() || chosen);
        if kept {
            only_accepted += 1;
            continue;
        }
        failures.push(format!(
            "durability: key {key} was acknowledged Stored with {:?}, but {}",
            String::from_utf8_lossy(value),
            missing.join(", ")
        ));
    }
    if only_accepted > 0 {
        world.log(format!(
            "disks: {only_accepted} acknowledged keys not stored on every disk yet (the network had not settled)"
        ));
    }
    failures.truncate(5);
    failures
}
