//! HAProxy: one text file of base64 keys, one per line, in the order
//! `previous.., active, next`: HAProxy keeps the LAST three lines and encrypts with the
//! second-to-last. So the staged key is the last line, the active key the one before, and the
//! retiring keys come first, oldest first. A file needs at least three lines; a ring with two
//! keys repeats its staged key at the front.
//!
//! `haproxy-runtime` writes the same file (HAProxy re-reads it on its next reload, so the file
//! must always hold the ring the runtime API was given) and then pushes the ring through the
//! stats socket with `set ssl tls-key` instead of reloading.
//!
//! Layout (ssl_sock.h `struct tls_sess_key_128/256`): name, AES key, HMAC key; 80 or 48 bytes,
//! every line one size.

use super::{
    base64_key, put_name_aes_hmac, Delivery, Format, FormatConfigError, FormatError, FormatInfo,
    FormatOptions, KeySize, Layout, Rendered, SecretBytes, SecretText,
};
use crate::ring::KeyRing;

/// HAProxy keeps this many keys (build default `TLS_TICKETS_NO`).
pub const TLS_TICKETS_NO: usize = 3;

/// Registry entry for the file + reload variant.
pub static INFO: FormatInfo = FormatInfo {
    name: "haproxy",
    summary: "tls-ticket-keys file of base64 lines (previous.., active, next); applied by reload",
    layout: Layout::File,
    delivery: Delivery::Reload,
    key_sizes: &[KeySize::Bytes80, KeySize::Bytes48],
    default_key_size: KeySize::Bytes80,
    takes_slots: false,
    build: build_file,
};

/// Registry entry for the runtime API variant.
pub static RUNTIME_INFO: FormatInfo = FormatInfo {
    name: "haproxy-runtime",
    summary: "same file, applied without reload through the stats socket (set ssl tls-key)",
    layout: Layout::File,
    delivery: Delivery::HaproxyRuntime,
    key_sizes: &[KeySize::Bytes80, KeySize::Bytes48],
    default_key_size: KeySize::Bytes80,
    takes_slots: false,
    build: build_runtime,
};

fn build_file(key_size: KeySize, o: &FormatOptions) -> Result<Box<dyn Format>, FormatConfigError> {
    Ok(Box::new(Haproxy {
        key_size,
        info: &INFO,
        retain: o.retain,
    }))
}

fn build_runtime(
    key_size: KeySize,
    o: &FormatOptions,
) -> Result<Box<dyn Format>, FormatConfigError> {
    Ok(Box::new(Haproxy {
        key_size,
        info: &RUNTIME_INFO,
        retain: o.retain,
    }))
}

/// The HAProxy format (file or runtime variant).
#[derive(Debug, Clone, Copy)]
pub struct Haproxy {
    key_size: KeySize,
    info: &'static FormatInfo,
    retain: usize,
}

impl Haproxy {
    /// The ring's keys as HAProxy lines, oldest first: padded retiring keys, active, staged.
    /// Each entry is one key's bytes.
    pub fn lines(&self, ring: &KeyRing) -> Vec<SecretBytes> {
        let mut keys: Vec<_> = ring.retiring().collect();
        keys.reverse(); // oldest first
        keys.push(ring.active());
        keys.extend(ring.staged());
        while keys.len() < TLS_TICKETS_NO {
            // Pad at the front with the newest decrypt-only key: no new key material.
            let pad = if keys.len() > 1 {
                keys[keys.len() - 1]
            } else {
                keys[0]
            };
            keys.insert(0, pad);
        }
        keys.iter()
            .map(|k| {
                let mut b = SecretBytes::with_capacity(self.key_size.bytes());
                put_name_aes_hmac(&mut b, &k.key, self.key_size);
                b
            })
            .collect()
    }
}

impl Format for Haproxy {
    fn info(&self) -> &'static FormatInfo {
        self.info
    }

    fn render(&self, ring: &KeyRing) -> Result<Rendered, FormatError> {
        let lines = self.lines(ring);
        let mut out = SecretBytes::with_capacity(lines.len() * (self.key_size.bytes() / 3 * 4 + 6));
        for line in &lines {
            out.extend(base64_key(line).expose().as_bytes());
            out.extend(b"\n");
        }
        Ok(Rendered::File(out))
    }

    fn snippet(&self, path: &str) -> String {
        let mut s = format!(
            "# haproxy.cfg: add to every TLS bind line of the pool\n\
             bind :443 ssl crt /etc/haproxy/site.pem tls-ticket-keys {path}\n"
        );
        if self.info.delivery == Delivery::HaproxyRuntime {
            s.push_str(
                "# and an admin-level stats socket in `global` for `set ssl tls-key`:\n\
                 stats socket /run/haproxy/admin.sock mode 600 level admin\n",
            );
        }
        s
    }

    /// The last three lines in base64: what HAProxy holds in memory after loading the file, and
    /// what the runtime API must hold after a push (oldest first; the middle one encrypts).
    fn runtime_ring(&self, ring: &KeyRing) -> Option<Vec<SecretText>> {
        let lines = self.lines(ring);
        Some(
            lines[lines.len() - TLS_TICKETS_NO..]
                .iter()
                .map(base64_key)
                .collect(),
        )
    }

    fn warnings(&self) -> Vec<String> {
        if self.retain > 1 {
            vec![format!(
                "HAProxy keeps only the last {TLS_TICKETS_NO} keys of its ticket file (previous, \
                 active, next), so retain = {} keeps just 1 retiring key on this target; tickets \
                 older than one rotation will not resume here",
                self.retain
            )]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{aes_hmac_48, aes_hmac_80, opts, ring};
    use super::super::{build, Rendered};
    use base64::Engine as _;

    fn text(r: Rendered) -> String {
        let Rendered::File(b) = r else {
            panic!("haproxy renders a file")
        };
        String::from_utf8(b.as_bytes().to_vec()).unwrap()
    }

    fn b64(v: Vec<u8>) -> String {
        base64::engine::general_purpose::STANDARD.encode(v)
    }

    #[test]
    fn golden_lines_previous_then_active_then_next() {
        // retiring 1; active 2; staged 3.
        let got = text(
            build("haproxy", &opts(1))
                .unwrap()
                .render(&ring(1))
                .unwrap(),
        );
        let want = format!(
            "{}\n{}\n{}\n",
            b64(aes_hmac_80(1)),
            b64(aes_hmac_80(2)),
            b64(aes_hmac_80(3))
        );
        assert_eq!(got, want);
        // The literal first line, so a base64 or layout change cannot slip through.
        assert_eq!(
            got.lines().next().unwrap(),
            // Computed independently: base64(name [1;16] ++ aes(1) ++ hmac(1)).
            "AQEBAQEBAQEBAQEBAQEBAaGgo6KlpKemqairqq2sr66xsLOytbS3trm4u7q9vL++sbK3uL2+o6Spqq+QlZabnIGCh4iNjvP0+fr/4OXm6+w="
        );
    }

    #[test]
    fn golden_48_byte_lines() {
        let mut o = opts(2);
        o.key_size = Some(48);
        let got = text(build("haproxy", &o).unwrap().render(&ring(2)).unwrap());
        let want: Vec<String> = [1, 2, 3, 4].map(|n| b64(aes_hmac_48(n))).to_vec();
        assert_eq!(got.lines().collect::<Vec<_>>(), want);
    }

    #[test]
    fn two_key_ring_is_padded_to_three_lines_with_no_new_key() {
        // Bootstrap: active 1, staged 2 -> [2, 1, 2]: the line before last (1) encrypts.
        let got = text(
            build("haproxy", &opts(1))
                .unwrap()
                .render(&ring(0))
                .unwrap(),
        );
        let want = [2, 1, 2].map(|n| b64(aes_hmac_80(n))).to_vec();
        assert_eq!(got.lines().collect::<Vec<_>>(), want);
    }

    #[test]
    fn runtime_ring_is_the_last_three_lines() {
        let f = build("haproxy-runtime", &opts(2)).unwrap();
        let got: Vec<String> = f
            .runtime_ring(&ring(2))
            .unwrap()
            .iter()
            .map(|s| s.expose().to_owned())
            .collect();
        assert_eq!(got, [2, 3, 4].map(|n| b64(aes_hmac_80(n))).to_vec());
    }

    #[test]
    fn retain_above_one_warns_that_haproxy_keeps_three_keys() {
        assert!(build("haproxy", &opts(1)).unwrap().warnings().is_empty());
        let w = build("haproxy-runtime", &opts(2)).unwrap().warnings();
        assert!(w[0].contains("only the last 3 keys"), "{w:?}");
    }
}
