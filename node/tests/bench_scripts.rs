//! The benchmark scripts' pure parts (wrk parsing, percentiles, merging, the delay table, and
//! the verdicts on the README's targets) pass their own self-tests. Run for real, the scripts
//! need wrk, etcd and (for the WAN one) root; their self-tests need only python3, which CI has.

use std::process::Command;

#[test]
fn the_benchmark_scripts_pass_their_self_tests() {
    for script in ["bench_vs_etcd.py", "wan_bench.py", "capacity_bench.py"] {
        let path = format!("{}/scripts/{script}", env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("python3")
            .arg(&path)
            .arg("--self-test")
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{script} --self-test failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains("self-test"), "{script} said {said:?}");
    }
}
