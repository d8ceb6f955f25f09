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
