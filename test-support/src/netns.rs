//! Network namespaces a test makes for itself (as root, inside a private
//! namespace of its own): a shell step, and a socket created inside one.
//! Shared by relay-core's fast path test and ucmrc's HA test.

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

/// Runs a shell step; fails the test with its stderr if it fails.
pub fn sh(cmd: &str) {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A UDP socket bound to `bind` inside namespace `netns` (a short-lived
/// thread joins it, makes the socket and ends; the socket stays there),
/// reads timing out after `timeout`.
pub fn socket_in(netns: &str, bind: &str, timeout: Duration) -> UdpSocket {
    use std::os::fd::AsRawFd;
    let (path, bind) = (format!("/run/netns/{netns}"), bind.to_string());
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("netns file");
        // SAFETY (test harness): setns moves only this short-lived thread
        // into the namespace, with a valid namespace descriptor.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let s = UdpSocket::bind(bind).expect("bind");
        s.set_read_timeout(Some(timeout)).expect("timeout");
        s
    })
    .join()
    .expect("namespace thread")
}

/// Runs test `test` of the running test binary again inside new
/// namespaces (`unshare` with `namespaces`, e.g. `["--net"]`; as root),
/// with the environment variable `child.0` set to `child.1` so the run
/// knows it is the inner one, and fails unless it passed and printed
/// `marker` (a filtered-out scenario must not pass silently). The inner
/// run's stderr is shown (takeover gaps and the like).
pub fn rerun_in_namespaces(test: &str, namespaces: &[&str], child: (&str, &str), marker: &str) {
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new("unshare")
        .args(namespaces)
        .arg("--")
        .arg(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(child.0, child.1)
        .output()
        .expect("unshare (util-linux) runs the test in new namespaces; CI runs as root");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(out.status.success(), "namespace run failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(marker), "the scenario did not run:\n{stdout}\n{stderr}");
}
