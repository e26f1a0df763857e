//! Apache httpd: `SSLSessionTicketKeyFile` holds exactly one 48-byte key (name, HMAC secret,
//! AES-128 key), which both encrypts and decrypts. There is no room for a staged or retiring
//! key, so every activation invalidates every ticket httpd issued before it.

use super::{
    put_name_hmac_aes, Delivery, Format, FormatConfigError, FormatError, FormatInfo, FormatOptions,
    KeySize, Layout, Rendered, SecretBytes,
};
use crate::ring::KeyRing;

/// Registry entry.
pub static INFO: FormatInfo = FormatInfo {
    name: "httpd",
    summary: "SSLSessionTicketKeyFile: the single 48-byte active key",
    layout: Layout::File,
    delivery: Delivery::Reload,
    key_sizes: &[KeySize::Bytes48],
    default_key_size: KeySize::Bytes48,
    takes_slots: false,
    build,
};

fn build(_: KeySize, _: &FormatOptions) -> Result<Box<dyn Format>, FormatConfigError> {
    Ok(Box::new(Httpd))
}

/// The httpd format.
#[derive(Debug, Clone, Copy)]
pub struct Httpd;

impl Format for Httpd {
    fn info(&self) -> &'static FormatInfo {
        &INFO
    }

    fn render(&self, ring: &KeyRing) -> Result<Rendered, FormatError> {
        let mut out = SecretBytes::with_capacity(48);
        put_name_hmac_aes(&mut out, &ring.active().key, KeySize::Bytes48);
        Ok(Rendered::File(out))
    }

    fn snippet(&self, path: &str) -> String {
        format!(
            "# httpd (inside the SSL VirtualHost); reload with `apachectl graceful`\n\
             SSLSessionTickets on\n\
             SSLSessionTicketKeyFile {path}\n"
        )
    }

    fn warnings(&self) -> Vec<String> {
        vec![
            "httpd holds a single ticket key: every key activation makes every ticket it \
              issued before invalid, so clients fall back to a full handshake once per rotation"
                .to_owned(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{hmac_aes_48, opts, ring};
    use super::super::{build, Rendered};

    #[test]
    fn golden_single_active_key_name_hmac_aes() {
        let f = build("httpd", &opts(2)).unwrap();
        let Rendered::File(b) = f.render(&ring(2)).unwrap() else {
            panic!("httpd renders a file")
        };
        assert_eq!(b.as_bytes(), &hmac_aes_48(3)[..]);
        assert!(f.warnings()[0].contains("every key activation"));
    }
}
