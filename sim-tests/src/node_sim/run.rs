//! One seed, in a fresh madsim runtime of its own: the world built (every founder records
//! every founding member), the clients and faults of the safety phase, healing, then the end
//! checks in order (calls answered, liveness, disks loaded by the real storage code,
//! linearizability, honesty, protocol violations) and the stats.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::net::NetSim;
use madsim::rand::{Rng, thread_rng};
use madsim::runtime::{Handle as SimHandle, Runtime};
use madsim::time::{Instant, sleep};
use replicator_core::{ClusterId, NetworkId, NodeId, Recovered};
use replicator_node::simdisk::SimDisk;
use replicator_node::storage::Storage;

use crate::linearizability;

use super::checks::{check_disks, check_honest, liveness};
use super::clients::client;
use super::faults::fault_injector;
use super::report::{NodeSimFailure, NodeSimStats};
use super::spec::NodeSimSpec;
use super::world::{Machine, World, node_process};
use super::{LIVENESS_WITHIN, PORT};

/// Runs one seed in a fresh madsim runtime. Never panics on a finding: a panic of the run
/// itself (a node's task, the harness) is reported as a failure too.
pub fn run_seed(spec: &NodeSimSpec) -> Result<NodeSimStats, NodeSimFailure> {
    let spec = spec.clone();
    // A thread of its own: madsim's runtime is per thread, and a panic stays in it.
    let joined = std::thread::spawn(move || {
        let mut config = madsim::Config::default();
        config.net.packet_loss_rate = spec.loss;
        config.net.send_latency =
            Duration::from_millis(spec.latency_ms.0)..Duration::from_millis(spec.latency_ms.1);
        let rt = Runtime::with_seed_and_config(spec.seed, config);
        rt.block_on(world(spec))
    })
    .join();
    match joined {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            Err(NodeSimFailure {
                reason: format!("the run panicked: {msg}"),
                log: Vec::new(),
                hash: 0,
            })
        }
    }
}

async fn world(spec: NodeSimSpec) -> Result<NodeSimStats, NodeSimFailure> {
    let sim = SimHandle::current();
    let network = NetworkId::new(format!("net-{:016x}", spec.seed));
    let n = spec.nodes();
    let mut founders = Vec::new();
    let mut machines = Vec::new();
    for ix in 0..n {
        let c = ix / spec.nodes_per_cluster;
        let k = ix % spec.nodes_per_cluster;
        let cluster = ClusterId::new(format!("c{c}"));
        let id = NodeId::new(format!("n{c}-{k}"));
        founders.push((cluster.clone(), id.clone()));
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, c as u8 + 1, k as u8 + 1));
        let fsync = Duration::from_micros(spec.fsync_us.0)..Duration::from_micros(spec.fsync_us.1);
        machines.push((ix, id, cluster, ip, SimDisk::new(fsync)));
    }
    let machines: Vec<Arc<Machine>> = machines
        .into_iter()
        .map(|(_, id, cluster, ip, disk)| {
            // A network founded at once: every founder records every founding member.
            let others: Vec<_> = founders.iter().filter(|(_, n)| *n != id).cloned().collect();
            Arc::new(Machine {
                id,
                cluster,
                ip,
                disk,
                fresh: Recovered::founder(network.clone()).with_members(others),
                running: Mutex::new(None),
                violations: Mutex::new(0),
                errors: Mutex::new(Vec::new()),
                incarnation: Mutex::new(0),
            })
        })
        .collect();
    let addrs: Vec<SocketAddr> = machines
        .iter()
        .map(|m| SocketAddr::new(m.ip, PORT))
        .collect();
    let world = Arc::new(World {
        spec: spec.clone(),
        machines: machines.clone(),
        sim_nodes: Mutex::new(Vec::new()),
        start: Instant::now(),
        log: Mutex::new(Vec::new()),
        history: Mutex::new(Vec::new()),
        acknowledged: Mutex::new(BTreeMap::new()),
        down: Mutex::new(vec![false; n]),
        paused: Mutex::new(vec![false; n]),
        clogged: Mutex::new(BTreeMap::new()),
        faults: Mutex::new(0),
        kills: Mutex::new(0),
        minority: Mutex::new(BTreeSet::new()),
        minority_misses: Mutex::new(Vec::new()),
    });
    for m in &machines {
        let machine = m.clone();
        let addrs = addrs.clone();
        let bug = spec.bug;
        let node = sim
            .create_node()
            .name(m.id.to_string())
            .ip(m.ip)
            .init(move || node_process(machine.clone(), addrs.clone(), bug))
            .build();
        world.sim_nodes.lock().unwrap().push(node);
    }
    world.log(format!("{n} nodes started: {spec:?}"));

    // Safety phase: clients and faults.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..spec.clients {
        clients.push(tokio::spawn(client(world.clone(), c, stop.clone())));
    }
    let faults = tokio::spawn(fault_injector(world.clone(), stop.clone()));
    if spec.minority_down {
        // While writes are in flight: the clients started already.
        sleep(Duration::from_millis(thread_rng().gen_range(100..600))).await;
        let minority = spec.minority();
        let names: Vec<String> = minority
            .iter()
            .map(|&ix| world.machines[ix].id.to_string())
            .collect();
        world.log(format!("a minority of every cluster down: kill {names:?}"));
        world
            .minority
            .lock()
            .unwrap()
            .extend(minority.iter().copied());
        for ix in minority {
            if !world.is_down(ix) {
                world.kill(ix);
            }
        }
        sleep(Duration::from_millis(spec.safety_ms.saturating_sub(600))).await;
    } else {
        sleep(Duration::from_millis(spec.safety_ms)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = faults.await;

    // Liveness phase: heal everything.
    world.log("heal: no more loss, every link unclogged, every node resumed and restarted");
    NetSim::current().update_config(|c| c.packet_loss_rate = 0.0);
    for m in &machines {
        m.disk.set_failing(false);
        m.disk.set_reads_failing(false);
    }
    let links: Vec<(usize, usize)> = world.clogged.lock().unwrap().keys().copied().collect();
    for (a, b) in links {
        NetSim::current().unclog_link(world.sim_node(a).id(), world.sim_node(b).id());
    }
    world.clogged.lock().unwrap().clear();
    world.minority.lock().unwrap().clear();
    for ix in 0..n {
        if std::mem::take(&mut world.paused.lock().unwrap()[ix]) {
            sim.resume(world.sim_node(ix).id());
        }
        world.restart(ix);
    }
    let healed = Instant::now();
    // Every check runs; a failure names each one that broke, safety first.
    let mut liveness_failures: Vec<String> = Vec::new();
    for (c, task) in clients.into_iter().enumerate() {
        let left = LIVENESS_WITHIN.saturating_sub(healed.elapsed());
        match tokio::time::timeout(left, task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => liveness_failures.push(format!("client {c} failed: {e}")),
            Err(_) => liveness_failures.push(format!(
                "liveness: client {c} still waits for an answer {LIVENESS_WITHIN:?} after healing"
            )),
        }
    }
    if liveness_failures.is_empty()
        && let Err(e) = liveness(&world, healed).await
    {
        liveness_failures.push(e);
    }
    // The disks must show it too: every acknowledged key stored everywhere once settled.
    let settled = liveness_failures.is_empty();
    let settle_ms = Instant::now().duration_since(healed).as_millis() as u64;

    // The end: every node crashes; every disk is loaded by the real storage code.
    sleep(Duration::from_millis(200)).await;
    for ix in 0..n {
        if !world.is_down(ix) {
            world.kill(ix);
        }
    }
    let mut failures: Vec<String> = Vec::new();
    let mut disks = Vec::new();
    for m in &machines {
        match Storage::open_sim(&m.disk, None).and_then(|mut s| s.load_whole()) {
            Ok(l) => disks.push(l.recovered),
            Err(e) => {
                failures.push(format!("the disk of {} does not load: {e:#}", m.id));
                disks.push(Recovered::joiner(network.clone()));
            }
        }
    }
    let history = world.history.lock().unwrap().clone();
    for v in linearizability::check_all(&history).into_iter().take(3) {
        failures.push(format!("not linearizable: {v}"));
    }
    failures.extend(check_disks(&world, &disks, settled));
    failures.extend(check_honest(&history, &disks));
    for m in &machines {
        let v = *m.violations.lock().unwrap()
            + m.running.lock().unwrap().as_ref().map_or(0, |r| {
                r.metrics
                    .violations
                    .load(std::sync::atomic::Ordering::Relaxed)
            });
        if v > 0 {
            failures.push(format!("{} reported {v} protocol violations", m.id));
        }
        if let Some(e) = m.errors.lock().unwrap().first() {
            failures.push(format!("{}: {e}", m.id));
        }
    }
    if spec.minority_strict {
        let misses = world.minority_misses.lock().unwrap();
        if let Some(first) = misses.first() {
            failures.push(format!(
                "liveness under a minority down: {} calls at the majority had no definite answer, first: {first}",
                misses.len()
            ));
        }
    }
    failures.extend(liveness_failures);
    let failure = (!failures.is_empty()).then(|| failures.join("; "));

    let mut hasher = std::hash::DefaultHasher::new();
    history.hash(&mut hasher);
    world.log.lock().unwrap().hash(&mut hasher);
    for d in &disks {
        format!("{:?}", d.keys).hash(&mut hasher);
    }
    let hash = hasher.finish();
    let log = world.log.lock().unwrap().clone();
    if let Some(reason) = failure {
        return Err(NodeSimFailure { reason, log, hash });
    }
    let writes_lost = machines.iter().map(|m| m.disk.stats().changes_lost).sum();
    let writes_refused = machines.iter().map(|m| m.disk.stats().writes_refused).sum();
    Ok(NodeSimStats {
        ops: history.len(),
        stored: world.acknowledged.lock().unwrap().len(),
        faults: *world.faults.lock().unwrap(),
        kills: *world.kills.lock().unwrap(),
        sim_ms: world.micros() / 1000,
        messages: NetSim::current().stat().msg_count,
        writes_lost,
        writes_refused,
        settle_ms,
        hash,
    })
}
