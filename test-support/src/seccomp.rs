//! A seccomp filter that makes some system calls fail with EPERM, as a
//! container's profile (or missing privileges) would: for tests that prove
//! the relay falls back when io_uring or BPF is refused. Included by path
//! (`#[path = "support/seccomp.rs"]`) so test binaries without the shared
//! support module can use it.

/// Installs, on the calling thread (and what it execs), a filter returning
/// EPERM for every system call number in `syscalls`. For `pre_exec`.
pub fn deny_with_eperm(syscalls: &[u32]) -> std::io::Result<()> {
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JEQ_K: u16 = 0x15;
    const BPF_RET_K: u16 = 0x06;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    let n = syscalls.len();
    assert!(n < 200, "a short list (jump offsets are 8 bits)");
    let f = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    // [load nr] [n × "equal: jump to EPERM"] [allow] [EPERM]
    let mut prog = vec![f(BPF_LD_W_ABS, 0, 0, 0)]; // seccomp_data.nr
    for (i, nr) in syscalls.iter().enumerate() {
        prog.push(f(BPF_JEQ_K, (n - i) as u8, 0, *nr));
    }
    prog.push(f(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW));
    prog.push(f(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::EPERM as u32));
    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_mut_ptr() };
    // SAFETY (test harness): plain prctl calls with a valid filter program
    // that outlives them.
    #[allow(unsafe_code)]
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_SECCOMP, 2 /* SECCOMP_MODE_FILTER */, &fprog as *const libc::sock_fprog) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
