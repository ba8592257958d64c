//! The fault injector of the safety phase: kills (mostly while a write waits for its fsync),
//! a cluster's power loss, a cluster restarted while partitioned, isolations, splits, clogged
//! links, failing disks and paused nodes, each drawn from the seed's fault kinds.

use std::sync::Arc;
use std::time::Duration;

use madsim::rand::{Rng, thread_rng};
use madsim::runtime::Handle as SimHandle;
use madsim::time::sleep;

use super::spec::FaultKind;
use super::world::World;

/// Injects faults until `stop`; returns nothing to wait for (every fault heals itself or is
/// healed by the liveness phase).
pub(super) async fn fault_injector(world: Arc<World>, stop: Arc<std::sync::atomic::AtomicBool>) {
    let spec = world.spec.clone();
    let n = world.machines.len();
    if spec.faults.is_empty() {
        return;
    }
    loop {
        let gap = thread_rng().gen_range(spec.fault_gap_ms.0..=spec.fault_gap_ms.1);
        sleep(Duration::from_millis(gap)).await;
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let kind = spec.faults[thread_rng().gen_range(0..spec.faults.len())];
        *world.faults.lock().unwrap() += 1;
        let hold = Duration::from_millis(thread_rng().gen_range(200..3000));
        let w = world.clone();
        match kind {
            FaultKind::Kill => {
                let ix = thread_rng().gen_range(0..n);
                // Most kills strike while a write of the node waits for its fsync (where
                // durability bugs live): wait up to 50 ms for one.
                if thread_rng().gen_bool(0.8) {
                    for _ in 0..50 {
                        if w.machines[ix].disk.has_unsynced() {
                            break;
                        }
                        sleep(Duration::from_millis(1)).await;
                    }
                }
                if w.is_down(ix) {
                    continue;
                }
                w.kill(ix);
                let down_for = Duration::from_millis(thread_rng().gen_range(0..2000));
                tokio::spawn(async move {
                    sleep(down_for).await;
                    w.restart(ix);
                });
            }
            FaultKind::CrashCluster => {
                let c = thread_rng().gen_range(0..spec.clusters);
                let side = w.nodes_of_cluster(c);
                for _ in 0..50 {
                    if side.iter().any(|&ix| w.machines[ix].disk.has_unsynced()) {
                        break;
                    }
                    sleep(Duration::from_millis(1)).await;
                }
                w.log(format!("power loss of cluster c{c}"));
                for &ix in &side {
                    if !w.is_down(ix) {
                        w.kill(ix);
                    }
                }
                let down_for = Duration::from_millis(thread_rng().gen_range(50..1000));
                tokio::spawn(async move {
                    sleep(down_for).await;
                    for &ix in &side {
                        w.restart(ix);
                    }
                });
            }
            FaultKind::RestartClusterPartitioned => {
                let c = thread_rng().gen_range(0..spec.clusters);
                let side = w.nodes_of_cluster(c);
                w.log(format!(
                    "partition cluster c{c} from the rest; restart all of it"
                ));
                let links = w.partition(&side);
                for &ix in &side {
                    if !w.is_down(ix) {
                        w.kill(ix);
                    }
                }
                let down_for = Duration::from_millis(thread_rng().gen_range(50..1000));
                tokio::spawn(async move {
                    sleep(down_for).await;
                    for &ix in &side {
                        w.restart(ix);
                    }
                    sleep(hold).await;
                    w.log(format!("heal the partition of c{c}"));
                    w.heal(&links);
                });
            }
            FaultKind::IsolateNode => {
                let ix = thread_rng().gen_range(0..n);
                w.log(format!("isolate {}", w.machines[ix].id));
                let links = w.partition(&[ix]);
                tokio::spawn(async move {
                    sleep(hold).await;
                    w.log(format!("heal the isolation of {}", w.machines[ix].id));
                    w.heal(&links);
                });
            }
            FaultKind::IsolateCluster => {
                let c = thread_rng().gen_range(0..spec.clusters);
                w.log(format!("isolate cluster c{c}"));
                let links = w.partition(&w.nodes_of_cluster(c));
                tokio::spawn(async move {
                    sleep(hold).await;
                    w.log(format!("heal the isolation of c{c}"));
                    w.heal(&links);
                });
            }
            FaultKind::Split => {
                let side: Vec<usize> = (0..n).filter(|_| thread_rng().gen_bool(0.5)).collect();
                if side.is_empty() || side.len() == n {
                    continue;
                }
                let names: Vec<String> =
                    side.iter().map(|&i| w.machines[i].id.to_string()).collect();
                w.log(format!("split {names:?} from the rest"));
                let links = w.partition(&side);
                tokio::spawn(async move {
                    sleep(hold).await;
                    w.log("heal the split");
                    w.heal(&links);
                });
            }
            FaultKind::Clog => {
                let a = thread_rng().gen_range(0..n);
                let b = (a + thread_rng().gen_range(1..n)) % n;
                w.log(format!("clog {} -> {}", w.machines[a].id, w.machines[b].id));
                w.clog(a, b);
                tokio::spawn(async move {
                    sleep(hold).await;
                    w.log(format!(
                        "unclog {} -> {}",
                        w.machines[a].id, w.machines[b].id
                    ));
                    w.unclog(a, b);
                });
            }
            FaultKind::DiskFull => {
                let ix = thread_rng().gen_range(0..n);
                let disk = w.machines[ix].disk.clone();
                if disk.is_failing() {
                    continue;
                }
                // Full (writes fail) or failing (its reads of decisions fail too).
                let reads_too = thread_rng().gen_bool(0.5);
                let what = if reads_too {
                    "writes and reads"
                } else {
                    "writes"
                };
                w.log(format!("the disk of {} fails ({what})", w.machines[ix].id));
                disk.set_failing(true);
                disk.set_reads_failing(reads_too);
                tokio::spawn(async move {
                    sleep(hold).await;
                    w.log(format!("the disk of {} works again", w.machines[ix].id));
                    disk.set_failing(false);
                    disk.set_reads_failing(false);
                });
            }
            FaultKind::Pause => {
                let ix = thread_rng().gen_range(0..n);
                if w.is_down(ix) || w.paused.lock().unwrap()[ix] {
                    continue;
                }
                w.paused.lock().unwrap()[ix] = true;
                w.log(format!("pause {}", w.machines[ix].id));
                SimHandle::current().pause(w.sim_node(ix).id());
                let hold = Duration::from_millis(thread_rng().gen_range(50..1500));
                tokio::spawn(async move {
                    sleep(hold).await;
                    if std::mem::take(&mut w.paused.lock().unwrap()[ix]) {
                        w.log(format!("resume {}", w.machines[ix].id));
                        SimHandle::current().resume(w.sim_node(ix).id());
                    }
                });
            }
        }
    }
}
