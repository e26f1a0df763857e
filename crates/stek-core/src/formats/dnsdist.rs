//! dnsdist (OpenSSL provider): `ticketKeyFile` of concatenated 80-byte records (name, AES-256
//! key, HMAC-SHA256 key); dnsdist pushes them into its ring in file order and encrypts with the
//! LAST one. Order: retiring oldest first, staged, active last. dnsdist keeps only
//! `numberOfTicketsKeys` (default 5) of them, the last ones, so that setting must be at least
//! 2 + retain. Set `ticketsKeysRotationDelay=0`, or each instance adds random local keys after
//! 12 hours and sharing breaks. The GnuTLS provider reads a single 64-byte key and is not
//! supported.

use super::{
    put_name_aes_hmac, Delivery, Format, FormatConfigError, FormatError, FormatInfo, FormatOptions,
    KeySize, Layout, Rendered, SecretBytes,
};
use crate::ring::KeyRing;

/// dnsdist's default `numberOfTicketsKeys`.
pub const DEFAULT_NUMBER_OF_TICKETS_KEYS: usize = 5;

/// Registry entry.
pub static INFO: FormatInfo = FormatInfo {
    name: "dnsdist",
    summary: "dnsdist ticketKeyFile (OpenSSL provider): 80-byte records, last encrypts",
    layout: Layout::File,
    delivery: Delivery::Reload,
    key_sizes: &[KeySize::Bytes80],
    default_key_size: KeySize::Bytes80,
    takes_slots: false,
    build,
};

fn build(_: KeySize, o: &FormatOptions) -> Result<Box<dyn Format>, FormatConfigError> {
    Ok(Box::new(Dnsdist { retain: o.retain }))
}

/// The dnsdist format.
#[derive(Debug, Clone, Copy)]
pub struct Dnsdist {
    retain: usize,
}

impl Format for Dnsdist {
    fn info(&self) -> &'static FormatInfo {
        &INFO
    }

    fn render(&self, ring: &KeyRing) -> Result<Rendered, FormatError> {
        let mut keys: Vec<_> = ring.retiring().collect();
        keys.reverse();
        keys.extend(ring.staged());
        keys.push(ring.active());
        let mut out = SecretBytes::with_capacity(keys.len() * 80);
        for k in keys {
            put_name_aes_hmac(&mut out, &k.key, KeySize::Bytes80);
        }
        Ok(Rendered::File(out))
    }

    fn snippet(&self, path: &str) -> String {
        format!(
            "-- dnsdist.conf; reload with: dnsdist -c -e 'reloadAllCertificates()'\n\
             addTLSLocal(\"0.0.0.0:853\", \"/etc/dnsdist/cert.pem\", \"/etc/dnsdist/key.pem\", \
             {{provider=\"openssl\", ticketKeyFile=\"{path}\", numberOfTicketsKeys={}, \
             ticketsKeysRotationDelay=0}})\n",
            (2 + self.retain).max(DEFAULT_NUMBER_OF_TICKETS_KEYS)
        )
    }

    fn warnings(&self) -> Vec<String> {
        let needed = 2 + self.retain;
        if needed > DEFAULT_NUMBER_OF_TICKETS_KEYS {
            vec![format!(
                "the ring holds up to {needed} keys but dnsdist keeps {} by default: set \
                 numberOfTicketsKeys={needed} in addTLSLocal, or the oldest keys are ignored",
                DEFAULT_NUMBER_OF_TICKETS_KEYS
            )]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{aes_hmac_80, opts, ring};
    use super::super::{build, Rendered};

    #[test]
    fn golden_records_retiring_oldest_first_then_staged_then_active_last() {
        let f = build("dnsdist", &opts(2)).unwrap();
        let Rendered::File(b) = f.render(&ring(2)).unwrap() else {
            panic!("dnsdist renders a file")
        };
        let want = [
            aes_hmac_80(1),
            aes_hmac_80(2),
            aes_hmac_80(4),
            aes_hmac_80(3),
        ]
        .concat();
        assert_eq!(b.as_bytes(), &want[..]);
    }

    #[test]
    fn large_retain_warns_about_number_of_tickets_keys() {
        assert!(build("dnsdist", &opts(3)).unwrap().warnings().is_empty());
        let w = build("dnsdist", &opts(4)).unwrap().warnings();
        assert!(w[0].contains("numberOfTicketsKeys=6"), "{w:?}");
    }
}
