//! The etcd client against a real etcd on loopback: the calls, the watch (live, resumed,
//! compacted, idle), leases, auth, a member killed and restarted on its data, and TLS (the
//! member's certificate checked, a client certificate where etcd asks for one).

mod support;

use lb_mio::etcd::{Client, Credentials, Event, Message, Options, TlsFiles, Watch};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};
use support::*;

/// Short, so the idle-watch test sees several in a few seconds.
const PROGRESS: &str = "--experimental-watch-progress-notify-interval=300ms";
/// Longest wait for one watch message.
const MESSAGE_WAIT: Duration = Duration::from_secs(5);

fn options(endpoints: &[String]) -> Options {
    Options {
        endpoints: endpoints.to_vec(),
        tls: None,
        credentials: None,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
    }
}

fn client(etcd: &Etcd) -> Client {
    Client::new(options(&[etcd.endpoint()])).unwrap()
}

/// An etcd with short progress notifications (killed when dropped: keep it to the end of the
/// test), and a client of it.
fn started() -> (Etcd, Client) {
    let etcd = Etcd::start(&[PROGRESS]);
    let client = client(&etcd);
    (etcd, client)
}

/// The next message that is not a progress notification.
#[track_caller]
fn next_change(watch: &mut Watch) -> Message {
    let deadline = Instant::now() + MESSAGE_WAIT;
    loop {
        match watch.next(deadline).unwrap() {
            Some(Message::Progress { .. }) => continue,
            Some(message) => return message,
            None => panic!("no change within {MESSAGE_WAIT:?}"),
        }
    }
}

/// The events of the watch until the change at `revision`; fails on any past it.
#[track_caller]
fn events_through(watch: &mut Watch, revision: i64) -> Vec<Event> {
    let mut seen: Vec<Event> = Vec::new();
    while seen.last().is_none_or(|e| e.revision() < revision) {
        match next_change(watch) {
            Message::Events { events, .. } => seen.extend(events),
            other => panic!("{other:?}"),
        }
    }
    let last = seen.last().unwrap().revision();
    assert_eq!(last, revision, "an event past {revision}");
    seen
}

/// Waits for a progress notification at `revision` or later: every event up to it has come.
#[track_caller]
fn progress_to(watch: &mut Watch, revision: i64) {
    let deadline = Instant::now() + MESSAGE_WAIT;
    loop {
        match watch.next(deadline).unwrap() {
            Some(Message::Progress { revision: at }) if at >= revision => return,
            Some(Message::Progress { .. }) => {}
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("no progress to {revision} within {MESSAGE_WAIT:?}"),
        }
    }
}

fn put(key: &str, revision: i64) -> (String, i64) {
    (key.to_string(), revision)
}

/// Each event as (key, revision of the change, whether a put).
fn summary(events: &[Event]) -> Vec<(String, i64, bool)> {
    events
        .iter()
        .map(|event| match event {
            Event::Put(kv) => (
                String::from_utf8_lossy(&kv.key).into(),
                event.revision(),
                true,
            ),
            Event::Delete { key, .. } => {
                (String::from_utf8_lossy(key).into(), event.revision(), false)
            }
        })
        .collect()
}

#[test]
fn put_then_range_sees_it_with_its_revision() {
    let (_etcd, mut client) = started();
    let a = client.put(b"/lb-mio/a", b"{\"n\":1}", 0).unwrap();
    let binary = [0u8, 0xff, b'\n', 0x80];
    let b = client.put(b"/lb-mio/b", &binary, 0).unwrap();
    client.put(b"/lb-mio0", b"outside", 0).unwrap();
    let last = client.put(b"/other", b"outside", 0).unwrap();
    assert!(a < b && b < last);

    let range = client.range(b"/lb-mio/").unwrap();
    assert_eq!(range.revision, last);
    let got: Vec<_> = range
        .kvs
        .iter()
        .map(|kv| (kv.key.as_slice(), kv.value.as_slice(), kv.mod_revision))
        .collect();
    assert_eq!(
        got,
        [
            (&b"/lb-mio/a"[..], &b"{\"n\":1}"[..], a),
            (b"/lb-mio/b", &binary, b)
        ]
    );
    assert!(client.range(b"/none/").unwrap().kvs.is_empty());
}

#[test]
fn a_dead_endpoint_is_passed_over_and_named_when_it_is_the_only_one() {
    let etcd = Etcd::start(&[PROGRESS]);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut both = Client::new(options(&[dead.clone(), etcd.endpoint()])).unwrap();
    both.put(b"/lb-mio/a", b"1", 0).unwrap();
    assert_eq!(both.range(b"/lb-mio/").unwrap().kvs.len(), 1);

    let mut alone = Client::new(options(std::slice::from_ref(&dead))).unwrap();
    let error = alone.range(b"/lb-mio/").unwrap_err().to_string();
    assert!(
        error.starts_with(&format!("etcd {dead}: range /lb-mio/: ")),
        "{error}"
    );
    assert!(error.contains("refused"), "{error}");
}

#[test]
fn a_watch_sees_puts_and_deletes_made_after_its_revision_in_order() {
    let (_etcd, mut client) = started();
    let start = client.put(b"/lb-mio/before", b"0", 0).unwrap();
    let mut watch = client.watch(b"/lb-mio/", start + 1).unwrap();

    let x = client.put(b"/lb-mio/x", b"1", 0).unwrap();
    let y = client.put(b"/lb-mio/y", b"2", 0).unwrap();
    assert!(client.delete_if(b"/lb-mio/x", x).unwrap().is_some());
    let deleted = client.range(b"/lb-mio/").unwrap().revision;
    client.put(b"/elsewhere", b"3", 0).unwrap();

    let events = events_through(&mut watch, deleted);
    let want = [
        ("/lb-mio/x", x, true),
        ("/lb-mio/y", y, true),
        ("/lb-mio/x", deleted, false),
    ];
    let want: Vec<_> = want
        .iter()
        .map(|&(k, r, p)| (k.to_string(), r, p))
        .collect();
    assert_eq!(summary(&events), want);
    progress_to(&mut watch, deleted + 1);
}

#[test]
fn a_watch_resumed_from_a_revision_sees_exactly_the_events_after_it() {
    let (_etcd, mut client) = started();
    let revisions: Vec<_> = (0..10)
        .map(|i| {
            put(
                &format!("/lb-mio/k{i}"),
                client
                    .put(format!("/lb-mio/k{i}").as_bytes(), b"v", 0)
                    .unwrap(),
            )
        })
        .collect();
    let last_seen = revisions[4].1;
    let mut watch = client.watch(b"/lb-mio/", last_seen + 1).unwrap();
    let events = events_through(&mut watch, revisions[9].1);
    let got: Vec<_> = summary(&events)
        .into_iter()
        .map(|(k, r, _)| (k, r))
        .collect();
    assert_eq!(got, revisions[5..]);
    // A notification past the last put proves nothing else was on its way.
    progress_to(&mut watch, revisions[9].1);
}

#[test]
fn a_transaction_whose_compare_fails_returns_none_and_changes_nothing() {
    let (_etcd, mut client) = started();
    let first = client.put(b"/lb-mio/k", b"one", 0).unwrap();
    let second = client.put(b"/lb-mio/k", b"two", 0).unwrap();

    assert_eq!(
        client.put_if(b"/lb-mio/k", b"stale", 0, first).unwrap(),
        None
    );
    assert_eq!(client.put_if(b"/lb-mio/k", b"create", 0, 0).unwrap(), None);
    assert_eq!(client.delete_if(b"/lb-mio/k", first).unwrap(), None);
    let range = client.range(b"/lb-mio/").unwrap();
    assert_eq!(range.revision, second, "a failed compare wrote something");
    assert_eq!(
        (range.kvs[0].value.as_slice(), range.kvs[0].mod_revision),
        (&b"two"[..], second)
    );

    let third = client.put_if(b"/lb-mio/k", b"three", 0, second).unwrap();
    assert_eq!(
        third,
        Some(client.range(b"/lb-mio/k").unwrap().kvs[0].mod_revision),
        "the revision of the write"
    );
    let deleted = client.delete_if(b"/lb-mio/k", third.unwrap()).unwrap();
    assert_eq!(deleted, Some(client.range(b"/lb-mio/").unwrap().revision));
    assert!(client.range(b"/lb-mio/").unwrap().kvs.is_empty());
    assert!(client.put_if(b"/lb-mio/k", b"new", 0, 0).unwrap().is_some());
}

#[test]
fn a_key_on_a_revoked_lease_is_deleted_and_the_watch_sees_it() {
    let (_etcd, mut client) = started();
    let lease = client.lease_grant(30).unwrap();
    assert!(lease.ttl >= 30, "{lease:?}");
    let at = client.put(b"/lb-mio/backends/b1", b"{}", lease.id).unwrap();
    assert_eq!(client.range(b"/lb-mio/").unwrap().kvs[0].lease, lease.id);
    let ttl = client.lease_keep_alive(lease.id).unwrap();
    assert!(ttl > 0 && ttl <= 30, "{ttl}");

    let mut watch = client.watch(b"/lb-mio/", at + 1).unwrap();
    client.lease_revoke(lease.id).unwrap();
    match next_change(&mut watch) {
        Message::Events { events, .. } => {
            assert!(
                matches!(&events[..], [Event::Delete { key, .. }] if key == b"/lb-mio/backends/b1"),
                "{events:?}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(client.range(b"/lb-mio/").unwrap().kvs.is_empty());
    assert_eq!(
        client.lease_keep_alive(lease.id).unwrap(),
        0,
        "a revoked lease renewed"
    );
}

#[test]
fn an_idle_watch_gets_progress_notifications() {
    let (_etcd, mut client) = started();
    let revision = client.put(b"/lb-mio/a", b"1", 0).unwrap();
    let mut watch = client.watch(b"/lb-mio/", revision + 1).unwrap();
    let started = Instant::now();
    for _ in 0..3 {
        let message = watch.next(Instant::now() + MESSAGE_WAIT).unwrap();
        assert_eq!(message, Some(Message::Progress { revision }));
    }
    // Three notifications every 300 ms: well under the wait for one (a bound, not a timing).
    assert!(started.elapsed() < MESSAGE_WAIT, "{:?}", started.elapsed());
}

#[test]
fn a_compacted_revision_is_told_with_the_revision_to_read_from() {
    let (etcd, mut client) = started();
    let old = client.put(b"/lb-mio/a", b"1", 0).unwrap();
    let now = client.put(b"/lb-mio/a", b"2", 0).unwrap();
    etcd.ctl(&["compact", &now.to_string()]);
    let mut watch = client.watch(b"/lb-mio/", old).unwrap();
    assert_eq!(
        next_change(&mut watch),
        Message::Compacted { revision: now }
    );
}

#[test]
fn etcd_killed_and_restarted_the_client_reconnects_and_the_watch_resumes() {
    let mut etcd = Etcd::start(&[PROGRESS]);
    let mut client = client(&etcd);
    let first = client.put(b"/lb-mio/a", b"1", 0).unwrap();
    let mut watch = client.watch(b"/lb-mio/", first + 1).unwrap();
    let second = client.put(b"/lb-mio/b", b"2", 0).unwrap();
    let seen = events_through(&mut watch, second);
    let last_seen = seen.last().unwrap().revision();

    etcd.kill();
    let error = watch.next(Instant::now() + MESSAGE_WAIT).unwrap_err();
    assert!(
        error.to_string().starts_with(&format!(
            "etcd {}: watch /lb-mio/ from revision {}: ",
            etcd.endpoint(),
            first + 1
        )),
        "{error}"
    );
    let error = client.range(b"/lb-mio/").unwrap_err();
    assert!(error.is_member(), "{error}");

    etcd.restart();
    // A change made while nobody watched: the resumed watch must see it, once.
    etcd.ctl(&["put", "/lb-mio/c", "3"]);
    let range = client.range(b"/lb-mio/").unwrap();
    assert_eq!(range.kvs.len(), 3);
    let mut watch = client.watch(b"/lb-mio/", last_seen + 1).unwrap();
    let fourth = client.put(b"/lb-mio/d", b"4", 0).unwrap();
    let events = events_through(&mut watch, fourth);
    let got: Vec<_> = summary(&events)
        .into_iter()
        .map(|(k, r, _)| (k, r))
        .collect();
    assert_eq!(
        got,
        [put("/lb-mio/c", range.revision), put("/lb-mio/d", fourth)]
    );
}

#[test]
fn with_auth_the_client_authenticates_and_again_when_its_token_expires() {
    let mut etcd = Etcd::start(&[PROGRESS, "--auth-token-ttl=1"]);
    etcd.enable_auth("secret");
    let mut anonymous = client(&etcd);
    let refused = anonymous.range(b"/lb-mio/").unwrap_err();
    assert!(!refused.is_member(), "{refused}");

    let mut options = options(&[etcd.endpoint()]);
    options.credentials = Some(Credentials {
        user: "root".into(),
        password: "secret".into(),
    });
    let mut client = Client::new(options).unwrap();
    let revision = client.put(b"/lb-mio/a", b"1", 0).unwrap();
    let mut watch = client.watch(b"/lb-mio/", revision).unwrap();
    assert!(matches!(next_change(&mut watch), Message::Events { .. }));
    // Simple tokens live --auth-token-ttl seconds past their last use.
    thread::sleep(Duration::from_millis(2500));
    assert_eq!(client.range(b"/lb-mio/").unwrap().kvs.len(), 1);
}

/// A client of `etcd` over TLS, trusting `ca`, with this client certificate and key.
fn tls_client(endpoint: &str, ca: &Path, cert: Option<&Leaf>) -> Client {
    let mut options = options(&[endpoint.to_string()]);
    options.tls = Some(TlsFiles {
        ca: ca.to_path_buf(),
        cert: cert.map(|leaf| leaf.cert.clone()),
        key: cert.map(|leaf| leaf.key.clone()),
    });
    Client::new(options).unwrap()
}

/// An etcd serving clients over TLS with a certificate for 127.0.0.1 from `pki`; with
/// `client_cert_auth`, asking clients for a certificate from `pki` too.
fn tls_etcd(pki: &Pki, client_cert_auth: bool) -> Etcd {
    Etcd::start_tls(EtcdTls::on_loopback(pki, client_cert_auth), &[PROGRESS])
}

/// What a user checks of a working client: a put read back by range and by `etcdctl`, and a
/// watch that sees the next put.
#[track_caller]
fn puts_ranges_and_watches(etcd: &Etcd, client: &mut Client) {
    let first = client.put(b"/lb-mio/a", b"1", 0).unwrap();
    let range = client.range(b"/lb-mio/").unwrap();
    assert_eq!(range.revision, first);
    let got: Vec<_> = range
        .kvs
        .iter()
        .map(|kv| (&kv.key[..], &kv.value[..]))
        .collect();
    assert_eq!(got, [(&b"/lb-mio/a"[..], &b"1"[..])]);
    assert_eq!(etcd.ctl(&["get", "--print-value-only", "/lb-mio/a"]), "1\n");

    let mut watch = client.watch(b"/lb-mio/", first + 1).unwrap();
    let second = client.put(b"/lb-mio/b", b"2", 0).unwrap();
    let events = events_through(&mut watch, second);
    assert_eq!(summary(&events), [("/lb-mio/b".to_string(), second, true)]);
}

/// The error of a call that failed, checked to name the endpoint and the call first.
#[track_caller]
fn error_of<T>(result: Result<T, lb_mio::etcd::Error>, endpoint: &str, call: &str) -> String {
    let error = match result {
        Ok(_) => panic!("{call} on {endpoint} succeeded"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.starts_with(&format!("etcd {endpoint}: {call}: ")),
        "{error}"
    );
    error
}

#[test]
fn over_tls_the_client_checks_the_members_certificate_and_its_calls_work() {
    let pki = Pki::new();
    let etcd = tls_etcd(&pki, false);
    let mut trusting = tls_client(&etcd.endpoint(), &pki.ca, None);
    puts_ranges_and_watches(&etcd, &mut trusting);

    // A certificate from a CA the client does not trust.
    let stranger = Pki::new();
    let mut wrong_ca = tls_client(&etcd.endpoint(), &stranger.ca, None);
    let bad = "TLS: the member's certificate does not check out: invalid peer certificate";
    let error = error_of(
        wrong_ca.range(b"/lb-mio/"),
        &etcd.endpoint(),
        "range /lb-mio/",
    );
    assert!(error.contains(bad), "{error}");
    let error = error_of(
        wrong_ca.watch(b"/lb-mio/", 1),
        &etcd.endpoint(),
        "watch /lb-mio/ from revision 1",
    );
    assert!(error.contains(bad), "{error}");

    // The right CA, but a name the certificate is not for (it has 127.0.0.1 only).
    let by_name = format!("localhost:{}", etcd.client.port());
    let mut wrong_name = tls_client(&by_name, &pki.ca, None);
    let error = error_of(wrong_name.range(b"/lb-mio/"), &by_name, "range /lb-mio/");
    assert!(error.contains(bad), "{error}");
    assert!(
        error.contains("not valid for name \"localhost\""),
        "{error}"
    );

    // A plain client: no answer it can read.
    let mut plain = client(&etcd);
    error_of(plain.range(b"/lb-mio/"), &etcd.endpoint(), "range /lb-mio/");
}

#[test]
fn over_tls_on_ipv6_loopback_a_certificate_for_the_address_is_taken() {
    let pki = Pki::new();
    let leaf = pki.leaf("etcd", KeyKind::Ecdsa, &["::1"]);
    let tls = EtcdTls {
        cert: leaf.cert,
        key: leaf.key,
        ca: pki.ca.clone(),
        client_cert_auth: false,
    };
    let etcd = Etcd::start_on("::1".parse().unwrap(), Some(tls), &[PROGRESS]);
    assert!(etcd.endpoint().starts_with("[::1]:"), "{}", etcd.endpoint());
    let mut client = tls_client(&etcd.endpoint(), &pki.ca, None);
    puts_ranges_and_watches(&etcd, &mut client);
}

#[test]
fn where_etcd_asks_for_a_client_certificate_one_from_its_ca_is_let_in_and_none_is_not() {
    let pki = Pki::new();
    let etcd = tls_etcd(&pki, true);
    let leaf = pki.leaf("lb-mio", KeyKind::Ecdsa, &["lb-mio.client"]);
    let mut client = tls_client(&etcd.endpoint(), &pki.ca, Some(&leaf));
    puts_ranges_and_watches(&etcd, &mut client);

    let mut without = tls_client(&etcd.endpoint(), &pki.ca, None);
    let none = "TLS: the member asks for a client certificate and none is set";
    let error = error_of(
        without.range(b"/lb-mio/"),
        &etcd.endpoint(),
        "range /lb-mio/",
    );
    assert!(error.contains(none), "{error}");
    let error = error_of(
        without.watch(b"/lb-mio/", 1),
        &etcd.endpoint(),
        "watch /lb-mio/ from revision 1",
    );
    assert!(error.contains(none), "{error}");

    // A certificate from another CA is no better than none.
    let other = Pki::new();
    let stranger = other.leaf("mallory", KeyKind::Ecdsa, &["mallory.client"]);
    let mut strange = tls_client(&etcd.endpoint(), &pki.ca, Some(&stranger));
    let error = error_of(
        strange.range(b"/lb-mio/"),
        &etcd.endpoint(),
        "range /lb-mio/",
    );
    assert!(
        error.contains("TLS: the member refused our client certificate"),
        "{error}"
    );
}

/// A client of `etcd` signing in as root with `password`.
fn root_client(etcd: &Etcd, password: &str) -> Client {
    let mut options = options(&[etcd.endpoint()]);
    options.credentials = Some(Credentials {
        user: "root".into(),
        password: password.into(),
    });
    Client::new(options).unwrap()
}

#[test]
fn with_a_password_the_client_signs_in_and_again_after_etcd_restarts() {
    let mut etcd = Etcd::start(&[PROGRESS]);
    // Credentials set before auth is on are no error (as with etcd's own client)...
    let mut signed_in = root_client(&etcd, "secret");
    signed_in.put(b"/before-auth", b"0", 0).unwrap();
    etcd.enable_auth("secret");
    // ...and once it is on, the kept-alive connection signs in.
    assert_eq!(signed_in.range(b"/before-auth").unwrap().kvs.len(), 1);
    puts_ranges_and_watches(&etcd, &mut signed_in);

    let mut wrong = root_client(&etcd, "guess");
    let refused = "sign-in as root: etcdserver: authentication failed";
    let error = error_of(wrong.range(b"/lb-mio/"), &etcd.endpoint(), "range /lb-mio/");
    assert!(error.contains(refused), "{error}");
    let error = error_of(
        wrong.watch(b"/lb-mio/", 1),
        &etcd.endpoint(),
        "watch /lb-mio/ from revision 1",
    );
    assert!(error.contains(refused), "{error}");

    // Without credentials: refused, the watch too (etcd creates and cancels it at once).
    let mut anonymous = client(&etcd);
    let error = error_of(
        anonymous.range(b"/lb-mio/"),
        &etcd.endpoint(),
        "range /lb-mio/",
    );
    assert!(error.contains("user name is empty"), "{error}");
    let error = error_of(
        anonymous.watch(b"/lb-mio/", 1),
        &etcd.endpoint(),
        "watch /lb-mio/ from revision 1",
    );
    assert!(error.contains("user name is empty"), "{error}");

    // etcd's simple tokens live in its memory: after a restart, the client's is unknown.
    let before = signed_in.range(b"/lb-mio/").unwrap().revision;
    etcd.kill();
    etcd.restart();
    let after = signed_in.put(b"/lb-mio/c", b"3", 0).unwrap();
    assert_eq!(signed_in.range(b"/lb-mio/").unwrap().kvs.len(), 3);
    let mut watch = signed_in.watch(b"/lb-mio/", before + 1).unwrap();
    let events = events_through(&mut watch, after);
    assert_eq!(summary(&events), [("/lb-mio/c".to_string(), after, true)]);
}
