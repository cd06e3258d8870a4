//! Property-based fuzzing of the code that reads untrusted bytes: the frame reader, the startup
//! parser and the SCRAM exchange. 100,000 cases per property on every run; none may panic, and
//! the structured cases must round-trip or fail exactly where the input was damaged.

use bytes::BytesMut;
use pgsidecar::auth::{
    ChannelOffer, KeyedScramClient, SCRAM_SHA_256, ScramKeys, ScramServer, ScramVerifier,
};
use pgsidecar::wire::startup::{StartupRequest, parse_startup, read_startup};
use pgsidecar::wire::{Frame, WireError, read_frame};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use proptest::prelude::*;
use proptest::test_runner::Config;

const CASES: u32 = 100_000;

fn config() -> Config {
    Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    }
}

/// One well-formed message: a tag and a body, with the right length word.
fn message() -> impl Strategy<Value = Vec<u8>> {
    (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(tag, body)| {
        let mut out = vec![tag];
        out.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
        out.extend_from_slice(&body);
        out
    })
}

/// Well-formed messages, then damaged: bytes flipped and the end cut off.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        (
            proptest::collection::vec(message(), 0..6),
            proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
            any::<usize>(),
        )
            .prop_map(|(messages, flips, cut)| {
                let mut bytes = messages.concat();
                if !bytes.is_empty() {
                    for (at, value) in flips {
                        let at = at % bytes.len();
                        bytes[at] = value;
                    }
                    bytes.truncate(cut % (bytes.len() + 1));
                }
                bytes
            }),
    ]
}

#[test]
fn frame_reader_never_panics_and_never_reads_past_a_frame() {
    proptest!(config(), |(bytes in stream(), limit in 4_usize..200)| {
        // Splitting from a buffer.
        let mut buf = BytesMut::from(&bytes[..]);
        let mut consumed = 0;
        while let Ok(Some(frame)) = Frame::split(&mut buf, limit) {
            prop_assert!(frame.body.len() + 4 <= limit);
            consumed += frame.body.len() + 5;
        }
        prop_assert_eq!(consumed + buf.len(), bytes.len());
        // Reading from a socket-like source until it is exhausted.
        let mut source = &bytes[..];
        let mut read_buf = BytesMut::new();
        let mut frames = Vec::new();
        let end = futures::executor::block_on(async {
            loop {
                match read_frame(&mut source, &mut read_buf, limit).await {
                    Ok(frame) => frames.push(frame),
                    Err(e) => break e,
                }
            }
        });
        let mut rebuilt = Vec::new();
        for frame in &frames {
            rebuilt.push(frame.tag);
            rebuilt.extend_from_slice(&u32::try_from(frame.body.len() + 4).unwrap().to_be_bytes());
            rebuilt.extend_from_slice(&frame.body);
        }
        prop_assert_eq!(&bytes[..rebuilt.len()], &rebuilt[..]);
        if rebuilt.len() == bytes.len() {
            prop_assert!(matches!(end, WireError::Closed));
        }
    });
}

fn startup_packet() -> impl Strategy<Value = Vec<u8>> {
    let name = proptest::collection::vec(1_u8..=255, 1..12);
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        (
            proptest::collection::vec((name.clone(), name), 0..5),
            any::<u16>(),
        )
            .prop_map(|(pairs, minor)| {
                let mut body = Vec::new();
                for (k, v) in pairs {
                    body.extend_from_slice(&k);
                    body.push(0);
                    body.extend_from_slice(&v);
                    body.push(0);
                }
                body.push(0);
                let mut out = u32::try_from(body.len() + 8)
                    .unwrap()
                    .to_be_bytes()
                    .to_vec();
                out.extend_from_slice(&((3_u32 << 16) | u32::from(minor % 4)).to_be_bytes());
                out.extend_from_slice(&body);
                out
            }),
        (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..24)).prop_map(|(code, tail)| {
            let mut out = u32::try_from(tail.len() + 8)
                .unwrap()
                .to_be_bytes()
                .to_vec();
            out.extend_from_slice(&code.to_be_bytes());
            out.extend_from_slice(&tail);
            out
        }),
    ]
}

#[test]
fn startup_parser_never_panics() {
    proptest!(config(), |(bytes in startup_packet())| {
        let _ = parse_startup(BytesMut::from(&bytes[..]));
        let mut source = &bytes[..];
        let parsed = futures::executor::block_on(read_startup(&mut source));
        if let Ok(StartupRequest::Startup { params, .. }) = parsed {
            for (key, value) in params {
                prop_assert!(!key.contains('\0') && !value.contains('\0'));
            }
        }
    });
}

/// Keys for one password, from one real exchange, so that each case can build a valid proof
/// without deriving the salted password again.
fn known_keys() -> (ScramVerifier, ScramKeys) {
    let verifier = ScramVerifier::from_password("fuzz-password");
    let mut client = ScramSha256::new(b"fuzz-password", ChannelBinding::unsupported());
    let first = String::from_utf8(client.message().to_vec()).unwrap();
    let (server, server_first) =
        ScramServer::start(verifier.clone(), SCRAM_SHA_256, ChannelOffer::None, &first).unwrap();
    client.update(server_first.as_bytes()).unwrap();
    let client_final = String::from_utf8(client.message().to_vec()).unwrap();
    let (_, keys) = server.finish(&client_final).unwrap();
    (verifier, keys)
}

#[test]
fn scram_exchange_never_panics_and_refuses_any_damage() {
    let (verifier, keys) = known_keys();
    let text = proptest::collection::vec(any::<u8>(), 0..120)
        .prop_map(|b| String::from_utf8_lossy(&b).into_owned());
    proptest!(config(), |(first in text.clone(), last in text, flip in proptest::option::of((any::<usize>(), 0x20_u8..0x7f)), plus in any::<bool>())| {
        // Arbitrary client messages.
        let offer = if plus { ChannelOffer::Tls(&[9; 32]) } else { ChannelOffer::None };
        if let Ok((server, _)) = ScramServer::start(verifier.clone(), SCRAM_SHA_256, offer, &first) {
            prop_assert!(server.finish(&last).is_err());
        }
        // A valid exchange, with one byte of the final message changed.
        let mut client = KeyedScramClient::new(keys.clone(), None, false);
        let (server, server_first) = ScramServer::start(
            verifier.clone(),
            SCRAM_SHA_256,
            ChannelOffer::None,
            &client.client_first(),
        )
        .unwrap();
        let good = client.client_final(&server_first).unwrap();
        let mut damaged = good.clone().into_bytes();
        if let Some((at, value)) = flip {
            let at = at % damaged.len();
            damaged[at] = value;
        }
        let damaged = String::from_utf8(damaged).unwrap();
        let outcome = server.finish(&damaged);
        if damaged == good {
            let (server_final, _) = outcome.unwrap();
            prop_assert!(client.verify_server_final(&server_final).is_ok());
        } else {
            prop_assert!(outcome.is_err(), "accepted a damaged message: {}", damaged);
        }
    });
}
