//! A real mail server in the loop: Debian's Postfix, started by the test on loopback with its
//! own configuration and queue directories, takes a message for a mailbox that does not exist,
//! writes the DSN itself, and hands it to `mailpipe inbound` through a pipe transport, as the
//! README tells operators to. The address ends up suppressed with Postfix's own diagnostic.

use mailpipe_tests::{binary, spawn_serve, tool, wait_for_ok};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn postfix(config_dir: &Path, args: &[&str]) -> String {
    let out = Command::new("/usr/sbin/postfix").arg("-c").arg(config_dir).args(args).output().expect("Debian's postfix is installed (tests/run.sh)");
    assert!(out.status.success(), "postfix {args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One SMTP exchange: sends `line` (if any) and reads the reply, which must start with `code`.
fn smtp(conn: &mut BufReader<std::net::TcpStream>, line: Option<&str>, code: &str) {
    if let Some(line) = line {
        conn.get_mut().write_all(format!("{line}\r\n").as_bytes()).unwrap();
    }
    loop {
        let mut reply = String::new();
        conn.read_line(&mut reply).unwrap();
        assert!(reply.starts_with(code), "{line:?} answered {reply:?}");
        if reply.as_bytes().get(3) != Some(&b'-') {
            return;
        }
    }
}

/// Stops the Postfix instance however the test ends.
struct Instance(std::path::PathBuf);

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = Command::new("/usr/sbin/postfix").arg("-c").arg(&self.0).arg("stop").output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dsn_written_by_postfix_and_piped_to_mailpipe_inbound_suppresses_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tool(d, &["tenants", "create", "a"]);
    let inbound = tool(d, &["keys", "create", "--tenant", "a", "--scope", "inbound:write", "--tier", "enterprise"]).trim().to_string();
    let read = tool(d, &["keys", "create", "--tenant", "a", "--scope", "suppressions:read", "--tier", "enterprise"]).trim().to_string();
    let (mut child, base) = spawn_serve(d, 200).await;
    wait_for_ok(&format!("{base}/readyz"), Duration::from_secs(15)).await;

    // Postfix runs its pipe transport as an unprivileged user: give it a copy of the binary it
    // can reach.
    let mta = tempfile::Builder::new().prefix("mailpipe-postfix-").tempdir().unwrap();
    let m = mta.path();
    std::fs::set_permissions(m, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = m.join("mailpipe");
    std::fs::copy(binary(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (etc, spool, lib) = (m.join("etc"), m.join("spool"), m.join("lib"));
    for p in [&etc, &spool, &lib] {
        std::fs::create_dir_all(p).unwrap();
    }
    // Postfix's own files (its lock, its caches) are written as its mail_owner.
    assert!(Command::new("chown").arg("postfix").arg(&lib).status().unwrap().success());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(
        etc.join("main.cf"),
        format!(
            "compatibility_level = 3.6\nqueue_directory = {spool}\ndata_directory = {lib}\nmail_owner = postfix\nsetgid_group = postdrop\n\
             myhostname = mta.test\nmydomain = test\nmyorigin = mta.test\nmydestination = mta.test\n\
             inet_interfaces = loopback-only\ninet_protocols = ipv4\nmynetworks = 127.0.0.0/8\n\
             alias_maps =\nalias_database =\nlocal_recipient_maps =\nbiff = no\n\
             transport_maps = inline:{{ bounces.test=mailpipe: }}\nmailpipe_destination_recipient_limit = 1\n\
             maillog_file = {log}\nmaillog_file_prefixes = {m}\nsmtputf8_enable = no\n",
            spool = spool.display(),
            lib = lib.display(),
            log = m.join("maillog").display(),
            m = m.display(),
        ),
    )
    .unwrap();
    std::fs::write(
        etc.join("master.cf"),
        format!(
            "127.0.0.1:{port} inet n - n - - smtpd\n\
             pickup unix n - n 60 1 pickup\ncleanup unix n - n - 0 cleanup\nqmgr unix n - n 300 1 qmgr\n\
             rewrite unix - - n - - trivial-rewrite\nbounce unix - - n - 0 bounce\ndefer unix - - n - 0 bounce\n\
             trace unix - - n - 0 bounce\nverify unix - - n - 1 verify\nflush unix n - n 1000? 0 flush\n\
             proxymap unix - - n - - proxymap\nshowq unix n - n - - showq\nerror unix - - n - - error\n\
             retry unix - - n - - error\ndiscard unix - - n - - discard\nlocal unix - n n - - local\n\
             smtp unix - - n - - smtp\nanvil unix - - n - 1 anvil\nscache unix - - n - 1 scache\n\
             postlog unix-dgram n - n - 1 postlogd\n\
             mailpipe unix - n n - - pipe flags=Rq user=nobody argv={bin} inbound --url {base} --key {inbound}\n",
            bin = bin.display(),
        ),
    )
    .unwrap();
    postfix(&etc, &["start"]);
    let _instance = Instance(etc.clone());

    // A campaign mail for a mailbox mta.test does not have: Postfix accepts it (it checks
    // local recipients only at delivery here), fails the local delivery, and returns a DSN to
    // the envelope sender, whose domain is routed to mailpipe.
    let mut conn = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while conn.is_none() {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(c) => conn = Some(BufReader::new(c)),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("postfix did not listen on {port}: {e}"),
        }
    }
    let mut conn = conn.unwrap();
    smtp(&mut conn, None, "220");
    smtp(&mut conn, Some("EHLO sender.test"), "250");
    smtp(&mut conn, Some("MAIL FROM:<bounce+spring@bounces.test>"), "250");
    smtp(&mut conn, Some("RCPT TO:<No.Such.User@mta.test>"), "250");
    smtp(&mut conn, Some("DATA"), "354");
    smtp(&mut conn, Some("From: news@sender.test\r\nTo: No.Such.User@mta.test\r\nSubject: Spring sale\r\nMessage-ID: <spring-77@sender.test>\r\n\r\nBuy now.\r\n."), "250");
    smtp(&mut conn, Some("QUIT"), "221");

    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let entry = loop {
        let entry: serde_json::Value = client.get(format!("{base}/v1/suppressions/no.such.user@mta.test")).bearer_auth(&read).send().await.unwrap().json().await.unwrap();
        if entry["suppressed"] == true {
            break entry;
        }
        let log = std::fs::read_to_string(m.join("maillog")).unwrap_or_default();
        assert!(Instant::now() < deadline, "not suppressed after 60 s; postfix's log:\n{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let provenance = &entry["history"][0]["provenance"];
    assert_eq!(entry["reason"], "hard_bounce", "{entry}");
    assert_eq!(provenance["status"], "5.1.1", "{entry}");
    let diagnostic = provenance["diagnostic"].as_str().unwrap_or_default();
    assert!(diagnostic.contains("unknown user") || diagnostic.contains("unknown"), "Postfix's own diagnostic: {entry}");
    postfix(&etc, &["stop"]);
    child.kill().unwrap();
    child.wait().unwrap();
}
