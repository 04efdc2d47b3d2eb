//! PostgreSQL for tests: a throwaway database per test (dropped on drop, also after a
//! panic), and a TCP proxy that can cut authgate off from PostgreSQL without stopping the
//! server other tests are using.
//!
//! The server is `AUTHGATE_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/test`,
//! which `.ci/run` starts); each test creates its own database next to that one.

use parking_lot::Mutex;
use sqlx::{Connection, PgConnection};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

pub fn base_url() -> String {
    std::env::var("AUTHGATE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// host:port of the test server.
pub fn server_addr() -> String {
    let u = url::Url::parse(&base_url()).expect("AUTHGATE_TEST_PG_URL is a URL");
    format!(
        "{}:{}",
        u.host_str().unwrap_or("127.0.0.1"),
        u.port().unwrap_or(5432)
    )
}

const PREFIX: &str = "authgate_t_";

/// A database of its own for one test, dropped (with `FORCE`) when this is dropped.
pub struct PgTestDb {
    pub name: String,
    pub url: String,
}

async fn admin() -> PgConnection {
    let url = base_url();
    tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(&url))
        .await
        .unwrap_or_else(|_| panic!("PostgreSQL at {url} did not answer within 10 s"))
        .unwrap_or_else(|e| {
            panic!("PostgreSQL must be reachable at {url} (set AUTHGATE_TEST_PG_URL; `.ci/run` starts a local server): {e}")
        })
}

impl PgTestDb {
    pub async fn create() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let mut conn = admin().await;
        sweep_leftovers(&mut conn).await;
        let name = format!(
            "{PREFIX}{}_{}_{:08x}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst),
            rand::random::<u32>()
        );
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let _ = conn.close().await;
        Self {
            url: url_with_db(&base_url(), &name),
            name,
        }
    }

    /// The database URL with the connection going through `proxy` instead.
    pub fn url_via(&self, proxy: &TcpProxy) -> String {
        let mut u = url::Url::parse(&self.url).expect("test database URL");
        u.set_host(Some("127.0.0.1")).expect("host");
        u.set_port(Some(proxy.port)).expect("port");
        u.to_string()
    }

    /// A direct connection, for looking at what authgate wrote.
    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url)
            .await
            .expect("connect to test database")
    }
}

fn url_with_db(base: &str, db: &str) -> String {
    let mut u = url::Url::parse(base).expect("AUTHGATE_TEST_PG_URL is a URL");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime (or while unwinding): use a thread with a
        // runtime of its own, bounded in time.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let url = base_url();
                let mut c =
                    tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(&url))
                        .await
                        .ok()?
                        .ok()?;
                let _ = tokio::time::timeout(
                    Duration::from_secs(20),
                    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .execute(&mut c),
                )
                .await;
                Some(())
            })
        })
        .join();
    }
}

/// Drops test databases left by test processes that died before their guards ran (the
/// process id is in the name; only on systems with /proc, to never touch a live run's).
async fn sweep_leftovers(conn: &mut PgConnection) {
    if !std::path::Path::new("/proc/self").exists() {
        return;
    }
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT datname FROM pg_database WHERE starts_with(datname, 'authgate_t_')",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap_or_default();
    for name in names {
        let pid = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('_').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut *conn)
                    .await;
            }
        }
    }
}

/// A TCP proxy in front of PostgreSQL. `cut` closes every connection through it and turns
/// new ones away (as a stopped server would); `restore` lets them through again.
pub struct TcpProxy {
    pub port: u16,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl TcpProxy {
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (o, c) = (open.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    drop(down);
                    continue;
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                c.lock().push(task.abort_handle());
            }
        })
        .abort_handle();
        Self {
            port,
            open,
            conns,
            accept,
        }
    }

    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for c in self.conns.lock().drain(..) {
            c.abort();
        }
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for c in self.conns.lock().drain(..) {
            c.abort();
        }
    }
}
