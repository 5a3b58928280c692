//! What a route table relies on: for every target in `path_corpus.txt` that lb-mio accepts, when
//! any common kind of backend reads the path as inside `/admin`, lb-mio's normalised path is
//! inside `/admin` too. The models are small readings of how each kind of backend turns a path
//! into the resource it serves; where a backend has a setting, a model takes the more permissive
//! one, which only makes the test harder to pass.

use lb_mio::http::path::{normalise, split_target};

/// What a model does with a `..` at the root.
#[derive(Clone, Copy)]
enum AtRoot {
    Refuse,
    Stay,
}

/// Merges slashes and removes `.` and `..` segments, keeping a trailing slash.
fn resolve(path: &[u8], at_root: AtRoot) -> Option<Vec<u8>> {
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.strip_prefix(b"/")?.split(|&b| b == b'/') {
        trailing_slash = matches!(segment, b"" | b"." | b"..");
        match segment {
            b"" | b"." => {}
            b".." if kept.pop().is_none() && matches!(at_root, AtRoot::Refuse) => return None,
            b".." => {}
            _ => kept.push(segment),
        }
    }
    let mut out: Vec<u8> = kept.iter().flat_map(|s| [&b"/"[..], s].concat()).collect();
    if trailing_slash || out.is_empty() {
        out.push(b'/');
    }
    Some(out)
}

/// Every escape decoded; `None` for a bad one.
fn decode_all(path: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(path.len());
    let mut rest = path;
    while let Some((&byte, tail)) = rest.split_first() {
        if byte != b'%' {
            out.push(byte);
            rest = tail;
            continue;
        }
        let digits = tail
            .get(..2)
            .filter(|d| d.iter().all(u8::is_ascii_hexdigit))?;
        out.push(u8::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()?);
        rest = &tail[2..];
    }
    Some(out)
}

/// nginx: decodes every escape (a decoded `/` is a separator), then merges slashes and
/// resolves dot segments; 400 above the root.
fn nginx(path: &[u8]) -> Option<Vec<u8>> {
    resolve(&decode_all(path)?, AtRoot::Refuse)
}

/// Tomcat and Java servlets: drop `;params` from each raw segment, decode (a decoded `/` taken
/// as a separator, as `encodedSolidusHandling=decode` does), then resolve; a `\` is refused
/// (`ALLOW_BACKSLASH` is off by default).
fn tomcat(path: &[u8]) -> Option<Vec<u8>> {
    let names: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .map(|segment| segment.split(|&b| b == b';').next().unwrap_or_default())
        .collect();
    let decoded = decode_all(&names.join(&b'/'))?;
    if decoded.contains(&b'\\') {
        return None;
    }
    resolve(&decoded, AtRoot::Refuse)
}

/// Go's net/http (1.22's ServeMux cleans the escaped path): resolve dot segments on the raw
/// path, staying at the root as `path.Clean` does, then decode.
fn go(path: &[u8]) -> Option<Vec<u8>> {
    decode_all(&resolve(path, AtRoot::Stay)?)
}

/// Routers that match the path as it came, dots and all (Express's `app.use('/admin')`,
/// Flask's and Starlette's `/<path:rest>`): decoded, nothing resolved or merged.
fn raw_router(path: &[u8]) -> Option<Vec<u8>> {
    decode_all(path)
}

/// RFC 3986 §5.2.4 readers (Envoy, the WHATWG URL parser, Rust's `url`): dot segments
/// resolved with empty segments kept, so `/admin//../x` is `/admin/x`; then decoded.
fn rfc3986(path: &[u8]) -> Option<Vec<u8>> {
    let mut kept: Vec<&[u8]> = Vec::new();
    let segments: Vec<&[u8]> = path.strip_prefix(b"/")?.split(|&b| b == b'/').collect();
    for (at, segment) in segments.iter().enumerate() {
        match *segment {
            b"." => {}
            b".." => {
                kept.pop();
            }
            _ => kept.push(segment),
        }
        if matches!(*segment, b"." | b"..") && at + 1 == segments.len() {
            kept.push(b"");
        }
    }
    decode_all(
        &kept
            .iter()
            .flat_map(|s| [&b"/"[..], s].concat())
            .collect::<Vec<u8>>(),
    )
}

/// IIS: decodes, takes `\` for `/`, then resolves. It ignores case, which [`MODELS`] says.
fn iis(path: &[u8]) -> Option<Vec<u8>> {
    let decoded = decode_all(path)?;
    let slashed: Vec<u8> = decoded
        .iter()
        .map(|&b| if b == b'\\' { b'/' } else { b })
        .collect();
    resolve(&slashed, AtRoot::Refuse)
}

/// How one kind of backend reads a path; `None` when it answers 400.
type Read = fn(&[u8]) -> Option<Vec<u8>>;

struct Model {
    name: &'static str,
    read: Read,
    /// Compare without ASCII case: a route guarding such a backend needs `path_case = insensitive`.
    any_case: bool,
}

const MODELS: [Model; 6] = [
    Model {
        name: "nginx",
        read: nginx,
        any_case: false,
    },
    Model {
        name: "tomcat",
        read: tomcat,
        any_case: false,
    },
    Model {
        name: "go",
        read: go,
        any_case: false,
    },
    Model {
        name: "raw router",
        read: raw_router,
        any_case: false,
    },
    Model {
        name: "rfc3986",
        read: rfc3986,
        any_case: false,
    },
    Model {
        name: "iis",
        read: iis,
        any_case: true,
    },
];

fn in_admin(path: &[u8], any_case: bool) -> bool {
    let path = if any_case {
        path.to_ascii_lowercase()
    } else {
        path.to_vec()
    };
    path == b"/admin" || path.starts_with(b"/admin/")
}

fn corpus() -> Vec<&'static str> {
    include_str!("path_corpus.txt")
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
}

/// The target's path as sent, when lb-mio can split the target (`/` for an absolute-form
/// target without one, as routes see it).
fn path_of(target: &str) -> Option<&[u8]> {
    let path = split_target(target.as_bytes()).map(|(path, _)| path)?;
    Some(if path.is_empty() { b"/" } else { path })
}

/// lb-mio's normalised path, `None` when it answers 400.
fn lb_mio(target: &str) -> Option<Vec<u8>> {
    let path = path_of(target)?;
    let mut out = vec![0; path.len()];
    normalise(path, &mut out).ok().map(<[u8]>::to_vec)
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn whatever_a_backend_reads_as_admin_lb_mio_routes_as_admin() {
    let mut failures = Vec::new();
    for target in corpus() {
        let Some(ours) = lb_mio(target) else { continue };
        let path = path_of(target).unwrap();
        for model in &MODELS {
            let Some(theirs) = (model.read)(path) else {
                continue;
            };
            if in_admin(&theirs, model.any_case) && !in_admin(&ours, model.any_case) {
                failures.push(format!(
                    "{target}: {} reads {}, lb-mio {}",
                    model.name,
                    show(&theirs),
                    show(&ours)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn paths_every_backend_reads_as_sent_pass_unchanged() {
    let ordinary: Vec<&str> = corpus()
        .into_iter()
        .filter(|target| {
            path_of(target).is_some_and(|path| {
                MODELS
                    .iter()
                    .all(|m| (m.read)(path).as_deref() == Some(path))
            })
        })
        .collect();
    assert!(ordinary.len() >= 15, "only {ordinary:?}");
    for target in ordinary {
        assert_eq!(
            lb_mio(target).as_deref(),
            path_of(target),
            "{target} changed or refused"
        );
    }
}

#[test]
fn the_corpus_is_large_and_hides_admin_often() {
    let corpus = corpus();
    let disguised = corpus
        .iter()
        .filter(|target| !in_admin(path_of(target).unwrap_or_default(), true))
        .filter(|target| {
            let path = path_of(target).unwrap_or_default();
            MODELS
                .iter()
                .any(|m| (m.read)(path).is_some_and(|p| in_admin(&p, m.any_case)))
        })
        .count();
    assert!(corpus.len() >= 60, "{} targets", corpus.len());
    assert!(disguised >= 25, "{disguised} disguised admin paths");
}

#[test]
fn the_models_read_as_their_backends_do() {
    let rows: [(Read, &str, Option<&str>); 14] = [
        (nginx, "/public/%2e%2e/admin", Some("/admin")),
        (nginx, "/public/..%2fadmin/", Some("/admin/")),
        (nginx, "/admin/..;/x", Some("/admin/..;/x")),
        (nginx, "/../x", None),
        (tomcat, "/public/..;x/admin", Some("/admin")),
        (tomcat, "/admin;jsessionid=1/x", Some("/admin/x")),
        (go, "/admin/%2e%2e", Some("/admin/..")),
        (go, "/../x//./y", Some("/x/y")),
        (iis, "/public\\..%5cADMIN", Some("/ADMIN")),
        (iis, "/x%zz", None),
        (raw_router, "/admin/../x", Some("/admin/../x")),
        (rfc3986, "/admin//../x", Some("/admin/x")),
        (rfc3986, "/a/b/..", Some("/a/")),
        (rfc3986, "/../x", Some("/x")),
    ];
    for (read, path, want) in rows {
        assert_eq!(
            read(path.as_bytes()).as_deref(),
            want.map(str::as_bytes),
            "{path}"
        );
    }
}
