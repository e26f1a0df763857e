//! Apache Traffic Server: one file of concatenated 48-byte records (name, HMAC secret, AES-128
//! key, `ssl_ticket_key_t`); the FIRST record encrypts. Order: active, staged, retiring newest
//! first. ATS re-reads the file on `traffic_ctl config reload` only when its mtime (one-second
//! resolution) advanced, so the writer must leave an mtime strictly newer than the previous one
//! ([`Format::mtime_must_advance`]).

use super::{
    put_name_hmac_aes, Delivery, Format, FormatConfigError, FormatError, FormatInfo, FormatOptions,
    KeySize, Layout, Rendered, SecretBytes,
};
use crate::ring::KeyRing;

/// Registry entry.
pub static INFO: FormatInfo = FormatInfo {
    name: "ats",
    summary: "Traffic Server ticket_key.filename: 48-byte records, first encrypts",
    layout: Layout::File,
    delivery: Delivery::Reload,
    key_sizes: &[KeySize::Bytes48],
    default_key_size: KeySize::Bytes48,
    takes_slots: false,
    build,
};

fn build(_: KeySize, _: &FormatOptions) -> Result<Box<dyn Format>, FormatConfigError> {
    Ok(Box::new(Ats))
}

/// The Traffic Server format.
#[derive(Debug, Clone, Copy)]
pub struct Ats;

impl Format for Ats {
    fn info(&self) -> &'static FormatInfo {
        &INFO
    }

    fn render(&self, ring: &KeyRing) -> Result<Rendered, FormatError> {
        let keys = ring.by_role();
        let mut out = SecretBytes::with_capacity(keys.len() * 48);
        for k in keys {
            put_name_hmac_aes(&mut out, &k.key, KeySize::Bytes48);
        }
        Ok(Rendered::File(out))
    }

    fn snippet(&self, path: &str) -> String {
        format!(
            "# records.config (ssl_multicert's ticket_key_name= is ignored by ATS 9.2):\n\
             CONFIG proxy.config.ssl.server.ticket_key.filename STRING {path}\n\
             # records.yaml (ATS 10):\n\
             # ts:\n#   ssl:\n#     server:\n#       ticket_key:\n#         filename: {path}\n"
        )
    }

    fn mtime_must_advance(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{hmac_aes_48, opts, ring};
    use super::super::{build, Rendered};

    #[test]
    fn golden_records_active_first_then_staged_then_retiring_newest_first() {
        let f = build("ats", &opts(2)).unwrap();
        let Rendered::File(b) = f.render(&ring(2)).unwrap() else {
            panic!("ats renders a file")
        };
        let want = [
            hmac_aes_48(3),
            hmac_aes_48(4),
            hmac_aes_48(2),
            hmac_aes_48(1),
        ]
        .concat();
        assert_eq!(b.as_bytes(), &want[..]);
        assert!(f.mtime_must_advance());
    }
}
