//! The world: simulated machines (an identity and a disk that outlives every process on it),
//! the process of a machine started from its disk as `replicator run` does, and what the
//! harness does to them (kill, restart, clog, partition, heal), with the run's log.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::net::{Endpoint, NetSim};
use madsim::runtime::{Handle as SimHandle, NodeHandle};
use madsim::time::{Instant, sleep};
use replicator_core::{ClusterId, Config, NodeId, Recovered};
use replicator_node::driver::{Driver, DriverBug, Handle, Parts};
use replicator_node::http;
use replicator_node::metrics::Metrics;
use replicator_node::simdisk::SimDisk;
use replicator_node::storage::Storage;
use tokio::sync::mpsc;

use crate::linearizability::Op;

use super::network::{SimTransport, network_task};
use super::spec::NodeSimSpec;
use super::{API_TOKEN, EVENTS_QUEUE_LEN, PORT};

/// One simulated machine: its identity, its disk (which outlives every process on it) and
/// what its running process published.
pub(super) struct Machine {
    pub(super) id: NodeId,
    pub(super) cluster: ClusterId,
    pub(super) ip: IpAddr,
    pub(super) disk: SimDisk,
    /// The state the machine's first process records on its empty disk.
    pub(super) fresh: Recovered,
    pub(super) running: Mutex<Option<Running>>,
    /// Protocol violations its drivers reported, over all incarnations.
    pub(super) violations: Mutex<u64>,
    /// Errors its drivers stopped with.
    pub(super) errors: Mutex<Vec<String>>,
    pub(super) incarnation: Mutex<u64>,
}

#[derive(Clone)]
pub(super) struct Running {
    pub(super) handle: Handle,
    pub(super) router: axum::Router,
    pub(super) metrics: Arc<Metrics>,
}

pub(super) struct World {
    pub(super) spec: NodeSimSpec,
    pub(super) machines: Vec<Arc<Machine>>,
    pub(super) sim_nodes: Mutex<Vec<NodeHandle>>,
    pub(super) start: Instant,
    pub(super) log: Mutex<Vec<String>>,
    pub(super) history: Mutex<Vec<Op>>,
    /// Keys and values clients were told Stored (for the final disk check).
    pub(super) acknowledged: Mutex<BTreeMap<String, Vec<u8>>>,
    /// Per node: whether it is down (killed, not restarted yet).
    pub(super) down: Mutex<Vec<bool>>,
    pub(super) paused: Mutex<Vec<bool>>,
    /// How many faults hold each directed link clogged.
    pub(super) clogged: Mutex<BTreeMap<(usize, usize), u32>>,
    pub(super) faults: Mutex<usize>,
    pub(super) kills: Mutex<usize>,
    /// The minority kept down (no fault restarts it) until healing.
    pub(super) minority: Mutex<BTreeSet<usize>>,
    /// Calls at other nodes answered indefinitely while the minority was down (checked with
    /// `minority_strict`).
    pub(super) minority_misses: Mutex<Vec<String>>,
}

impl World {
    pub(super) fn micros(&self) -> u64 {
        Instant::now().duration_since(self.start).as_micros() as u64
    }

    pub(super) fn log(&self, line: impl AsRef<str>) {
        let t = self.micros();
        self.log.lock().unwrap().push(format!(
            "{:>6}.{:03}ms {}",
            t / 1000,
            t % 1000,
            line.as_ref()
        ));
    }

    pub(super) fn running(&self, ix: usize) -> Option<Running> {
        self.machines[ix].running.lock().unwrap().clone()
    }

    pub(super) fn sim_node(&self, ix: usize) -> NodeHandle {
        self.sim_nodes.lock().unwrap()[ix].clone()
    }

    pub(super) fn is_down(&self, ix: usize) -> bool {
        self.down.lock().unwrap()[ix]
    }

    pub(super) fn kill(&self, ix: usize) {
        let m = &self.machines[ix];
        SimHandle::current().kill(self.sim_node(ix).id());
        m.disk.crash();
        *m.running.lock().unwrap() = None;
        self.down.lock().unwrap()[ix] = true;
        self.paused.lock().unwrap()[ix] = false;
        *self.kills.lock().unwrap() += 1;
        self.log(format!("kill {} ({})", m.id, m.cluster));
    }

    /// A call at a node outside the minority got no definite answer: recorded while the
    /// minority is down (the strict check counts them).
    pub(super) fn minority_miss(&self, what: String) {
        if !self.minority.lock().unwrap().is_empty() {
            let at = self.micros();
            self.minority_misses
                .lock()
                .unwrap()
                .push(format!("{what} at {at}us"));
        }
    }

    pub(super) fn restart(&self, ix: usize) {
        if !self.is_down(ix) || self.minority.lock().unwrap().contains(&ix) {
            return;
        }
        self.down.lock().unwrap()[ix] = false;
        SimHandle::current().restart(self.sim_node(ix).id());
        self.log(format!("restart {}", self.machines[ix].id));
    }

    pub(super) fn clog(&self, a: usize, b: usize) {
        let mut c = self.clogged.lock().unwrap();
        let n = c.entry((a, b)).or_insert(0);
        *n += 1;
        if *n == 1 {
            NetSim::current().clog_link(self.sim_node(a).id(), self.sim_node(b).id());
        }
    }

    pub(super) fn unclog(&self, a: usize, b: usize) {
        let mut c = self.clogged.lock().unwrap();
        if let Some(n) = c.get_mut(&(a, b)) {
            *n -= 1;
            if *n == 0 {
                c.remove(&(a, b));
                NetSim::current().unclog_link(self.sim_node(a).id(), self.sim_node(b).id());
            }
        }
    }

    /// Clogs both directions between the two groups; returns the links to unclog.
    pub(super) fn partition(&self, side: &[usize]) -> Vec<(usize, usize)> {
        let n = self.machines.len();
        let mut links = Vec::new();
        for &a in side {
            for b in 0..n {
                if !side.contains(&b) {
                    links.push((a, b));
                    links.push((b, a));
                }
            }
        }
        for &(a, b) in &links {
            self.clog(a, b);
        }
        links
    }

    pub(super) fn heal(&self, links: &[(usize, usize)]) {
        for &(a, b) in links {
            self.unclog(a, b);
        }
    }

    pub(super) fn nodes_of_cluster(&self, c: usize) -> Vec<usize> {
        let k = self.spec.nodes_per_cluster;
        (c * k..(c + 1) * k).collect()
    }
}

/// The process of one simulated machine, from its disk: what `replicator run` does, with the
/// simulated network and disk in place of libp2p and a file.
pub(super) async fn node_process(
    machine: Arc<Machine>,
    world_addrs: Vec<SocketAddr>,
    bug: Option<DriverBug>,
) {
    let incarnation = {
        let mut i = machine.incarnation.lock().unwrap();
        *i += 1;
        *i
    };
    let fail = |what: String| {
        machine
            .errors
            .lock()
            .unwrap()
            .push(format!("incarnation {incarnation}: {what}"));
    };
    // As `replicator run`: open, bind the database to this identity, load what it recorded.
    // A node whose disk fails cannot start; its supervisor starts it again a moment later.
    let (storage, network, loaded) = loop {
        let opened =
            Storage::open_sim(&machine.disk, Some(&machine.fresh)).and_then(|mut storage| {
                storage.bind_identity(machine.id.as_str())?;
                let network = storage.network()?;
                let loaded = storage.load()?;
                Ok((storage, network, loaded))
            });
        match opened {
            Ok(started) => break started,
            Err(_) if machine.disk.is_failing() => sleep(Duration::from_millis(500)).await,
            Err(e) => return fail(format!("cannot open the storage: {e:#}")),
        }
    };
    let ep = match Endpoint::bind(SocketAddr::new(machine.ip, PORT)).await {
        Ok(ep) => ep,
        Err(e) => return fail(format!("cannot bind: {e}")),
    };
    let (events_tx, events) = mpsc::channel(EVENTS_QUEUE_LEN);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    tokio::spawn(network_task(
        (machine.cluster.clone(), machine.id.clone(), network),
        ep,
        world_addrs,
        out_rx,
        events_tx,
    ));
    let config = Config::default();
    let value_bytes_max = config.value_bytes_max;
    let metrics = Arc::new(Metrics::default());
    let built = Driver::with_bug(
        Parts {
            config,
            id: machine.id.clone(),
            cluster: machine.cluster.clone(),
            loaded,
            storage,
            transport: SimTransport { out: out_tx },
            events,
            metrics: metrics.clone(),
        },
        bug,
    );
    let (driver, handle) = match built {
        Ok(d) => d,
        Err(e) => return fail(format!("cannot start the driver: {e:#}")),
    };
    let router = http::router(http::Api {
        driver: handle.clone(),
        metrics: metrics.clone(),
        value_bytes_max,
        network_open: false,
        // Writes need the API token (the clients send it): the check runs on every HTTP PUT.
        auth: Arc::new(http::Auth {
            token: Some(API_TOKEN.into()),
            writes: true,
            reads: false,
        }),
        // Nobody asks a simulated node to leave over HTTP: a closed channel (answers 503).
        leave: tokio::sync::mpsc::channel(1).0,
        dashboard: Default::default(),
    });
    *machine.running.lock().unwrap() = Some(Running {
        handle,
        router,
        metrics: metrics.clone(),
    });
    let result = driver.run().await;
    *machine.violations.lock().unwrap() += metrics
        .violations
        .load(std::sync::atomic::Ordering::Relaxed);
    if let Err(e) = result {
        fail(format!("the driver stopped: {e:#}"));
    }
}
