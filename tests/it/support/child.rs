//! Child processes whose stdout and stderr are read *while they run*.
//!
//! A pipe holds about 64 KiB; a child that logs more blocks on its next write
//! until someone reads. Reading only after the child exits (or after sending it
//! a signal it must answer) can then hang the test, or make a healthy daemon
//! look stuck. [`Drained`] reads both pipes on threads of their own from the
//! moment the child starts.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A running child with both output pipes drained into memory.
pub struct Drained {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

/// Read `pipe` to its end into `into`.
fn drain(mut pipe: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => into
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .extend_from_slice(&buf[..n]),
            }
        }
    })
}

impl Drained {
    /// Spawn `command` with piped stdout and stderr, both drained at once.
    pub fn spawn(command: &mut Command) -> Drained {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            drain(child.stdout.take().expect("stdout"), Arc::clone(&stdout)),
            drain(child.stderr.take().expect("stderr"), Arc::clone(&stderr)),
        ];
        Drained {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited (without waiting).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// SIGKILL it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Send `signal` to it.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: a signal to our own child process.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, signal);
        }
    }

    /// Its stderr so far (lossy UTF-8).
    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(
            &self
                .stderr
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_owned()
    }

    /// Wait for it to exit and for both pipes to close: status, stdout, stderr.
    pub fn wait(mut self) -> (ExitStatus, String, String) {
        let status = self.child.wait().expect("wait");
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let take = |m: &Arc<Mutex<Vec<u8>>>| {
            String::from_utf8_lossy(&std::mem::take(
                &mut *m.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
            ))
            .into_owned()
        };
        (status, take(&self.stdout), take(&self.stderr))
    }
}

#[test]
fn child_stderr_is_drained_while_it_runs() {
    // 1 MiB of log lines, far beyond a pipe's buffer, before the child can exit.
    let mut child = Drained::spawn(Command::new("sh").args([
        "-c",
        "i=0; while [ $i -lt 16 ]; do head -c 65536 /dev/zero | tr '\\0' x >&2; i=$((i+1)); done; echo done",
    ]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the child blocked on a full stderr pipe"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (status, stdout, stderr) = child.wait();
    assert!(status.success());
    assert_eq!(stdout, "done\n");
    assert_eq!(stderr.len(), 16 * 65536);
}
