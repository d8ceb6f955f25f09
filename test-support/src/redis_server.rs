//! A real `redis-server` for tests, on a Unix socket in a temporary
//! directory (no TCP port to collide with).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// Waits until a redis-server started with its stdout piped says it accepts
/// connections, then keeps draining its log (a full pipe would block it).
pub fn wait_ready(child: &mut Child) {
    let out = child.stdout.take().expect("redis-server's stdout piped");
    let mut lines = BufReader::new(out).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.to_ascii_lowercase().contains("ready to accept connections") => break,
            Some(Ok(_)) => continue,
            _ => panic!("redis-server exited before accepting connections"),
        }
    }
    std::thread::spawn(move || for _ in lines {});
}

/// A running redis-server; killed on drop.
pub struct RedisServer {
    /// Its directory (socket, logs).
    pub dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one in a fresh directory and waits until it accepts
    /// connections (it says so on stdout).
    pub fn start(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ucmrc-redis-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut s = Self { dir, child: None };
        s.restart();
        s
    }

    /// The URL of its socket.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.dir.join("redis.sock").display())
    }

    /// Starts (again, after [`kill`](Self::kill)) with no data.
    pub fn restart(&mut self) {
        let sock = self.dir.join("redis.sock");
        let _ = std::fs::remove_file(&sock);
        let mut child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no", "--unixsocketperm", "700"])
            .arg("--unixsocket")
            .arg(&sock)
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package; scripts/setup-debian.sh installs it)");
        wait_ready(&mut child);
        self.child = Some(child);
    }

    /// Kills it (SIGKILL): its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) it: commands time out meanwhile.
    pub fn freeze(&self, frozen: bool) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let sig = if frozen { "-STOP" } else { "-CONT" };
        assert!(Command::new("kill").args([sig, &pid]).status().expect("kill").success());
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl RedisServer {
    /// A plain client connection for checks.
    pub fn client(&self) -> redis::Connection {
        redis::Client::open(self.url()).expect("url").get_connection().expect("connect")
    }
}
