//! A throwaway MariaDB server for tests that need settings the shared stack servers must keep
//! (see shared/notes/binlog-reader.md "MariaDB without systemd"): its own datadir, socket and
//! port, killed on drop.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::mysql::MySqlPoolOptions;

/// A MariaDB server of this test only: its own datadir, socket and port; killed on drop.
pub struct Scratch {
    pub dir: PathBuf,
    pub port: u16,
    pub args: Vec<String>,
    pub child: Option<Child>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn mariadbd() -> &'static str {
    if Path::new("/usr/sbin/mariadbd").exists() {
        "/usr/sbin/mariadbd"
    } else {
        "mariadbd"
    }
}

#[allow(dead_code)]
impl Scratch {
    /// Installs a fresh datadir and starts `mariadbd` with `flags` on a free port.
    pub fn new(name: &str, flags: &[&str]) -> Scratch {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("mdb-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("data");
        // A tmpdir of its own: concurrent installs sharing /tmp trip over each other's temporary tables.
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let out = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg("--user=root")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db")
            .output()
            .expect("mariadb-install-db (the MariaDB server package; deploy/local/stack.sh up installs it)");
        assert!(out.status.success(), "mariadb-install-db failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut args: Vec<String> = vec![
            "--no-defaults".into(),
            format!("--datadir={}", data.display()),
            format!("--tmpdir={}", tmp.display()),
            format!("--socket={}", dir.join("mysqld.sock").display()),
            format!("--pid-file={}", dir.join("mysqld.pid").display()),
            format!("--log-error={}", dir.join("error.log").display()),
            "--bind-address=127.0.0.1".into(),
            "--user=root".into(),
        ];
        args.extend(flags.iter().map(|f| f.to_string()));
        let mut s = Scratch { dir, port: 0, args, child: None };
        // A port found free may be taken again before mariadbd binds it: try another.
        for attempt in 0.. {
            s.port = free_port();
            match s.try_start() {
                Ok(()) => break,
                Err(log) if attempt < 5 && log.contains("Bind on TCP/IP port") => continue,
                Err(log) => panic!("mariadbd did not start:\n{log}"),
            }
        }
        s
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// Starts the server on `self.port` and waits until it accepts connections; the error log
    /// if it exits first.
    pub fn try_start(&mut self) -> Result<(), String> {
        let before = self.log().matches("ready for connections").count();
        let child = Command::new(mariadbd())
            .args(&self.args)
            .arg(format!("--port={}", self.port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.log().matches("ready for connections").count() <= before {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!("mariadbd exited with {status}:\n{}", self.log()));
            }
            if Instant::now() > deadline {
                return Err(format!("mariadbd not ready after 60 s:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// SIGTERM, and wait until it is gone (the datadir stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(60);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Starts it again on the same port and datadir.
    pub fn restart(&mut self) {
        let mut tries = 0;
        while let Err(log) = self.try_start() {
            tries += 1;
            assert!(tries < 20 && log.contains("Bind on TCP/IP port"), "mariadbd did not start again:\n{log}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `mysql://root@127.0.0.1:<port>` (root without password, this server only).
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    /// Runs `sql` (several statements allowed) as root.
    pub async fn exec(&self, sql: &str) {
        let pool = MySqlPoolOptions::new().max_connections(1).connect(&self.url()).await.unwrap();
        super::exec(&pool, sql).await;
        pool.close().await;
    }

    pub async fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        let pool = MySqlPoolOptions::new().max_connections(1).connect(&self.url()).await.unwrap();
        let rows = super::rows(&pool, sql).await;
        pool.close().await;
        rows
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
