//! Unit tests of PLAIN and SCRAM: RFC 7677's exchange, both sides against each
//! other, equal cost for unknown users, and parsing of hostile messages.

use std::cell::RefCell;
use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use super::scram::{attributes, saslname_decode, saslname_encode};
use super::*;

thread_local! {
    /// PBKDF2 runs on this thread: (hash, iterations) of each.
    static DERIVATIONS: RefCell<Vec<(Hash, u32)>> = const { RefCell::new(Vec::new()) };
}

pub(super) fn count_derivation(hash: Hash, iterations: u32) {
    DERIVATIONS.with(|d| d.borrow_mut().push((hash, iterations)));
}

/// The derivations `f` ran, sorted.
fn derivations_of(f: impl FnOnce()) -> Vec<(Hash, u32)> {
    DERIVATIONS.with(|d| d.borrow_mut().clear());
    f();
    let mut out = DERIVATIONS.with(|d| std::mem::take(&mut *d.borrow_mut()));
    out.sort_by_key(|(h, i)| (*h as u8, *i));
    out
}

#[test]
fn rfc7677_sha256_exchange() {
    // RFC 7677 section 3: user "user", password "pencil".
    let (mut client, first) =
        ScramClient::with_nonce(SCRAM_SHA_256, "user", "pencil", "rOprNGfwEbeRWgbNEkqO").unwrap();
    assert_eq!(first, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
    let server_first =
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    let fin = client.respond(server_first).unwrap();
    assert_eq!(
        String::from_utf8(fin).unwrap(),
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    );
    client
        .verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
        .unwrap();
    assert!(client.verify(b"v=AAAA").is_err());
}

fn creds() -> Credentials {
    let mut c = Credentials::default();
    let mut alice = BTreeMap::new();
    alice.insert(
        SCRAM_SHA_512.to_string(),
        ScramEntry::new(Hash::Sha512, "alice-secret", 4096),
    );
    alice.insert(
        SCRAM_SHA_256.to_string(),
        ScramEntry::new(Hash::Sha256, "alice-secret", 4096),
    );
    c.users.insert("alice".into(), alice);
    c
}

#[test]
fn server_and_client_agree_and_wrong_passwords_fail() {
    let creds = creds();
    for mechanism in [SCRAM_SHA_256, SCRAM_SHA_512] {
        let (mut client, first) = ScramClient::new(mechanism, "alice", "alice-secret").unwrap();
        let (server, server_first) = ScramServer::start(&creds, mechanism, &first).unwrap();
        let fin = client.respond(&server_first).unwrap();
        let (user, server_final) = server.finish(&fin).unwrap();
        assert_eq!(user, "alice");
        client.verify(&server_final).unwrap();

        let (mut client, first) = ScramClient::new(mechanism, "alice", "wrong").unwrap();
        let (server, server_first) = ScramServer::start(&creds, mechanism, &first).unwrap();
        let fin = client.respond(&server_first).unwrap();
        assert!(matches!(
            server.finish(&fin),
            Err(AuthError::BadCredentials { .. })
        ));

        let (mut client, first) = ScramClient::new(mechanism, "mallory", "x").unwrap();
        let (server, server_first) = ScramServer::start(&creds, mechanism, &first).unwrap();
        let fin = client.respond(&server_first).unwrap();
        assert!(matches!(
            server.finish(&fin),
            Err(AuthError::BadCredentials { .. })
        ));
    }
}

#[test]
fn plain_checks_against_salted_entries() {
    let creds = creds();
    assert_eq!(
        plain_login(&creds, b"\0alice\0alice-secret").unwrap(),
        "alice"
    );
    assert!(plain_login(&creds, b"\0alice\0nope").is_err());
    assert!(plain_login(&creds, b"\0bob\0alice-secret").is_err());
    assert!(matches!(
        plain_login(&creds, b"garbage"),
        Err(AuthError::Malformed(_))
    ));
}

#[test]
fn credentials_file_round_trip_holds_no_password() {
    let text = toml::to_string(&creds()).unwrap();
    assert!(!text.contains("alice-secret"));
    let back: Credentials = toml::from_str(&text).unwrap();
    assert!(back.check_plain("alice", "alice-secret"));
}

/// Made-up material with a chosen shape, without running PBKDF2.
fn entry_with(salt_len: usize, iterations: u32, fill: u8) -> ScramEntry {
    ScramEntry {
        salt: B64.encode(vec![fill; salt_len]),
        iterations,
        stored_key: B64.encode([fill; 32]),
        server_key: B64.encode([fill; 32]),
    }
}

fn server_first_of(creds: &Credentials, mechanism: &str, user: &str) -> (Vec<u8>, u32) {
    let first = format!("n,,n={user},r=abc");
    let (_, sf) = ScramServer::start(creds, mechanism, first.as_bytes()).unwrap();
    let attrs = attributes(std::str::from_utf8(&sf).unwrap());
    (
        B64.decode(&attrs[&'s']).unwrap(),
        attrs[&'i'].parse().unwrap(),
    )
}

#[test]
fn unknown_users_get_salts_and_iterations_like_real_users() {
    let mut creds = Credentials::default();
    for (i, name) in ["alice", "bob", "carol"].into_iter().enumerate() {
        let mut e = BTreeMap::new();
        e.insert(SCRAM_SHA_256.to_string(), entry_with(32, 10_000, i as u8));
        creds.users.insert(name.into(), e);
    }
    let (alice_salt, alice_i) = server_first_of(&creds, SCRAM_SHA_256, "alice");
    assert_eq!((alice_salt, alice_i), (vec![0; 32], 10_000));

    let (mallory, i) = server_first_of(&creds, SCRAM_SHA_256, "mallory");
    assert_eq!(mallory.len(), 32, "same salt length as the real users");
    assert_eq!(i, 10_000, "same iterations as the real users");
    let (again, _) = server_first_of(&creds, SCRAM_SHA_256, "mallory");
    assert_eq!(mallory, again, "an unknown user's salt is stable too");
    let (trudy, _) = server_first_of(&creds, SCRAM_SHA_256, "trudy");
    assert_ne!(mallory, trudy);
    // A mechanism nobody has takes the shape of the other entries.
    let (other, i) = server_first_of(&creds, SCRAM_SHA_512, "mallory");
    assert_eq!((other.len(), i), (32, 10_000));
}

#[test]
fn plain_costs_the_same_for_unknown_users() {
    let mut creds = Credentials::default();
    for name in ["alice", "bob"] {
        let mut e = BTreeMap::new();
        e.insert(
            SCRAM_SHA_256.to_string(),
            ScramEntry::new(Hash::Sha256, "pw", 5),
        );
        e.insert(
            SCRAM_SHA_512.to_string(),
            ScramEntry::new(Hash::Sha512, "pw", 7),
        );
        creds.users.insert(name.into(), e);
    }
    let wrong = derivations_of(|| assert!(plain_login(&creds, b"\0alice\0nope").is_err()));
    let good = derivations_of(|| assert!(plain_login(&creds, b"\0alice\0pw").is_ok()));
    let unknown = derivations_of(|| assert!(plain_login(&creds, b"\0zed\0pw").is_err()));
    let authzid = derivations_of(|| assert!(plain_login(&creds, b"bob\0alice\0pw").is_err()));
    let expected = vec![(Hash::Sha256, 5), (Hash::Sha512, 7)];
    assert_eq!(wrong, expected);
    assert_eq!(good, expected, "no early exit on a match");
    assert_eq!(
        unknown, expected,
        "an unknown user costs what a real one does"
    );
    assert_eq!(authzid, expected);
}

#[test]
fn scram_final_of_unknown_users_fails_through_the_same_checks() {
    let mut creds = Credentials::default();
    let mut e = BTreeMap::new();
    e.insert(SCRAM_SHA_256.to_string(), entry_with(24, 4096, 1));
    creds.users.insert("alice".into(), e);
    let (server, sf) = ScramServer::start(&creds, SCRAM_SHA_256, b"n,,n=zed,r=abc").unwrap();
    let ScramServer::Sent {
        known, ref entry, ..
    } = server;
    assert!(!known);
    assert!(entry.decoded().is_some(), "decoy material is well-formed");
    let nonce = attributes(std::str::from_utf8(&sf).unwrap())[&'r'].clone();
    let fin = format!("c=biws,r={nonce},p={}", B64.encode([0u8; 32]));
    assert!(matches!(
        server.finish(fin.as_bytes()),
        Err(AuthError::BadCredentials { .. })
    ));
}

#[test]
fn multibyte_characters_at_attribute_positions_are_malformed_not_panics() {
    let creds = creds();
    // `kv[2..]` used to slice inside the three-byte `€`.
    for first in [
        "n,,n=alice,r=abc,\u{20ac}=x",
        "n,,\u{20ac}=alice,r=abc",
        "n,,\u{20ac}",
        "\u{20ac},,n=alice,r=abc",
        "n,\u{20ac}=a,n=alice,r=abc",
        "n,,n=al\u{20ac}ce,r=\u{1d11e}",
    ] {
        let _ = ScramServer::start(&creds, SCRAM_SHA_256, first.as_bytes());
    }
    let (server, sf) = ScramServer::start(&creds, SCRAM_SHA_256, b"n,,n=alice,r=abc").unwrap();
    let nonce = attributes(std::str::from_utf8(&sf).unwrap())[&'r'].clone();
    let fin = format!("c=biws,r={nonce},\u{20ac}=1,p=AAAA");
    assert!(server.finish(fin.as_bytes()).is_err());
    let mut client = ScramClient::with_nonce(SCRAM_SHA_256, "u", "p", "n")
        .unwrap()
        .0;
    assert!(client.respond("\u{20ac}=1,r=n1".as_bytes()).is_err());
    assert!(client.verify("\u{20ac}=1".as_bytes()).is_err());
}

#[test]
fn saslnames_and_gs2_headers_are_checked() {
    let creds = creds();
    let start = |m: &str| ScramServer::start(&creds, SCRAM_SHA_256, m.as_bytes());
    assert!(start("n,,n=alice,r=abc").is_ok());
    assert!(start("y,,n=alice,r=abc").is_ok());
    assert!(start("n,a=alice,n=alice,r=abc").is_ok());
    assert!(matches!(
        start("n,a=bob,n=alice,r=abc"),
        Err(AuthError::BadCredentials { .. })
    ));
    for bad in [
        "p=tls-unique,,n=alice,r=abc",
        "n,x,n=alice,r=abc",
        "n,,n=al=ice,r=abc",
        "n,,n=alice,r=",
        "n,,m=ext,n=alice,r=abc",
        "n,,n=alice",
        "n,,r=abc",
    ] {
        assert!(
            matches!(start(bad), Err(AuthError::Malformed(_))),
            "{bad:?} is malformed"
        );
    }
    assert_eq!(saslname_decode("a=2Cb=3Dc").as_deref(), Some("a,b=c"));
    assert_eq!(saslname_decode("=3D2C").as_deref(), Some("=2C"));
    assert_eq!(saslname_decode("a=").as_deref(), None);
    assert_eq!(
        saslname_decode(&saslname_encode("x=,y")).as_deref(),
        Some("x=,y")
    );
}

#[test]
fn the_client_refuses_absurd_iteration_counts() {
    for i in ["1", "4095", "65537", "4294967295"] {
        let (mut client, _) =
            ScramClient::with_nonce(SCRAM_SHA_256, "user", "pencil", "abc").unwrap();
        let sf = format!("r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i={i}");
        let d = derivations_of(|| assert!(client.respond(sf.as_bytes()).is_err()));
        assert!(d.is_empty(), "no derivation for i={i}");
    }
}

/// splitmix64: deterministic, so a failure names its seed and input.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Pieces that matter to the parsers: separators, escapes, multi-byte UTF-8
/// (2, 3 and 4 bytes), invalid UTF-8, and attribute starts.
const PIECES: &[&[u8]] = &[
    b",",
    b"=",
    b"\0",
    b",,",
    b"=2C",
    b"=3D",
    b"=",
    b",p=",
    b"r=",
    b"n=",
    b"a=",
    b"c=",
    b"m=",
    b"s=",
    b"i=",
    b"n,,",
    b"y,,",
    b"p=",
    "\u{e9}".as_bytes(),
    "\u{20ac}".as_bytes(),
    "\u{1d11e}".as_bytes(),
    "\u{fffd}".as_bytes(),
    b"\xff",
    b"\xe2\x82",
    b"\xc3",
    b"biws",
    b"alice",
    b"AAAA",
    b"==",
    ",\u{20ac}=".as_bytes(),
    "\u{1d11e}=".as_bytes(),
    ",\u{e9}=".as_bytes(),
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut m = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(m.len() + 1);
        match rng.below(7) {
            // Replace an attribute's key (the byte after a `,`, or the
            // first) with a piece: where slicing by byte offsets broke.
            6 => {
                let commas: Vec<usize> = std::iter::once(0)
                    .chain(
                        m.iter()
                            .enumerate()
                            .filter(|(_, b)| **b == b',')
                            .map(|(i, _)| i + 1),
                    )
                    .filter(|i| *i < m.len())
                    .collect();
                if !commas.is_empty() {
                    let k = commas[rng.below(commas.len())];
                    let p = PIECES[rng.below(PIECES.len())];
                    m.splice(k..k + 1, p.iter().copied());
                }
            }
            0 => m.insert(at, rng.next() as u8),
            1 => {
                let p = PIECES[rng.below(PIECES.len())];
                m.splice(at..at, p.iter().copied());
            }
            2 if at < m.len() => m[at] ^= 1 << rng.below(8),
            3 => m.truncate(at),
            4 if at < m.len() => {
                let end = (at + rng.below(6)).min(m.len());
                m.drain(at..end);
            }
            _ => {
                let p = PIECES[rng.below(PIECES.len())];
                m.extend_from_slice(p);
            }
        }
    }
    m
}

fn random_message(rng: &mut Rng) -> Vec<u8> {
    let mut m = Vec::new();
    for _ in 0..rng.below(12) {
        if rng.below(3) == 0 {
            m.push(rng.next() as u8);
        } else {
            m.extend_from_slice(PIECES[rng.below(PIECES.len())]);
        }
    }
    m
}

fn no_panic(what: &str, input: &[u8], f: impl FnOnce()) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    assert!(
        r.is_ok(),
        "{what} panicked on {:?}",
        String::from_utf8_lossy(input)
    );
}

#[test]
fn server_side_parsing_survives_random_and_mutated_messages() {
    // Real SCRAM entries (derived once) and, for PLAIN, cheap ones (1
    // iteration) so thousands of checks stay fast; an unknown user's decoy
    // copies that shape.
    let creds = creds();
    let mut plain_creds = Credentials::default();
    let mut alice = BTreeMap::new();
    alice.insert(
        SCRAM_SHA_256.to_string(),
        ScramEntry::new(Hash::Sha256, "pw", 1),
    );
    alice.insert(
        SCRAM_SHA_512.to_string(),
        ScramEntry::new(Hash::Sha512, "pw", 1),
    );
    plain_creds.users.insert("alice".into(), alice);
    // The client's salted passwords, derived once: the exchange below skips
    // PBKDF2 on the client side.
    let salted = |hash: Hash, m: &str| {
        let e = creds.entry("alice", m).unwrap();
        hash.salted_password("alice-secret", &B64.decode(&e.salt).unwrap(), e.iterations)
    };
    let salted = [
        salted(Hash::Sha256, SCRAM_SHA_256),
        salted(Hash::Sha512, SCRAM_SHA_512),
    ];
    let mut rng = Rng(0x5a5a_1234);
    let firsts: &[&[u8]] = &[
        b"n,,n=alice,r=abcdef",
        b"n,a=alice,n=alice,r=abcdef",
        b"y,,n=mallory,r=x",
        b"n,,n=a=2Cb=3D,r=x,tokenauth=true",
    ];
    let plains: &[&[u8]] = &[b"\0alice\0pw", b"alice\0alice\0x", b"\0\0", b"\0zed\0pw"];
    for round in 0..4000 {
        let mechanism = [SCRAM_SHA_256, SCRAM_SHA_512][round % 2];
        let first = if round % 4 == 3 {
            random_message(&mut rng)
        } else {
            let seed = firsts[rng.below(firsts.len())];
            mutate(&mut rng, seed)
        };
        no_panic("client-first", &first, || {
            let _ = ScramServer::start(&creds, mechanism, &first);
        });

        // Client-final against a real exchange: the honest final, mutated, or
        // random bytes.
        let (mut client, good_first) =
            ScramClient::new(mechanism, "alice", "alice-secret").unwrap();
        let (server, server_first) = ScramServer::start(&creds, mechanism, &good_first).unwrap();
        let read = client.read_server_first(&server_first).unwrap();
        let honest = client.final_with(&salted[round % 2], &read);
        if round == 0 {
            let (user, server_final) = ScramServer::start(&creds, mechanism, &good_first)
                .and_then(|(s, sf)| {
                    let read = client.read_server_first(&sf).unwrap();
                    let fin = client.final_with(&salted[0], &read);
                    s.finish(&fin)
                })
                .unwrap();
            assert_eq!(user, "alice", "the honest exchange works");
            client.verify(&server_final).unwrap();
        }
        let fin = match round % 3 {
            0 => random_message(&mut rng),
            _ => mutate(&mut rng, &honest),
        };
        no_panic("client-final", &fin, || {
            if let Ok((_, server_final)) = server.finish(&fin) {
                let _ = client.verify(&server_final);
            }
        });

        let plain = if round % 2 == 0 {
            random_message(&mut rng)
        } else {
            let seed = plains[rng.below(plains.len())];
            mutate(&mut rng, seed)
        };
        no_panic("PLAIN", &plain, || {
            let _ = plain_login(&plain_creds, &plain);
        });

        // And the proxy's own client side against hostile server messages.
        let hostile = mutate(&mut rng, &server_first);
        no_panic("server-first", &hostile, || {
            let (mut c, _) = ScramClient::new(mechanism, "alice", "pw").unwrap();
            if let Ok(read) = c.read_server_first(&hostile) {
                let _ = c.final_with(&salted[round % 2], &read);
            }
            let _ = c.verify(&hostile);
        });
    }
}
