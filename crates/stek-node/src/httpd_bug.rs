//! The httpd ticket-sharing bug: Debian's httpd 2.4 with OpenSSL 3 derives a per-process HMAC
//! key (mod_ssl passes a pointer to a stack buffer as the HMAC key), so tickets never resume on
//! another instance even with an identical key file. Fixed on httpd trunk (r1876937), in no
//! 2.4.x release. stek warns at start-up when a target's httpd has it.

use std::process::Command;

use crate::reload::CommandSpec;

/// The httpd version of the binary this target reloads (or of `apache2`/`httpd` in PATH).
pub fn detect_version(reload: Option<&CommandSpec>) -> Option<(String, (u32, u32, u32))> {
    let mut candidates: Vec<String> = Vec::new();
    if let Some(program) = reload.and_then(|r| r.argv.first()) {
        let base = program.rsplit('/').next().unwrap_or(program);
        if base.contains("apache") || base.contains("httpd") {
            candidates.push(program.clone());
        }
    }
    candidates.extend(["apache2".to_owned(), "httpd".to_owned()]);
    candidates.into_iter().find_map(|program| {
        let out = Command::new(&program).arg("-v").output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_version(&text).map(|v| (program, v))
    })
}

/// Parses `Server version: Apache/2.4.71 (Debian)`.
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let rest = text.split("Apache/").nth(1)?;
    let ver: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = ver.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// Whether this httpd version cannot share ticket keys between instances.
pub fn has_sharing_bug(version: (u32, u32, u32)) -> bool {
    version.0 == 2 && version.1 <= 4
}

/// The start-up warning for an httpd target.
pub fn sharing_warning(reload: Option<&CommandSpec>) -> String {
    match detect_version(reload) {
        Some((program, v)) if has_sharing_bug(v) => format!(
            "{program} is httpd {}.{}.{}: its mod_ssl derives a per-process HMAC key, so tickets issued by one httpd instance NEVER resume on another, even with stek's identical key file (fixed on httpd trunk r1876937, in no 2.4.x release). stek still rotates the key, but cross-box resumption will not work with this httpd",
            v.0, v.1, v.2
        ),
        Some((program, v)) => format!(
            "{program} is httpd {}.{}.{}; httpd before 2.5 cannot share ticket keys between instances, check that yours can",
            v.0, v.1, v.2
        ),
        None => "could not run apache2 -v or httpd -v to check the version: httpd 2.4.x cannot share ticket keys between instances (tickets resume only on the instance that issued them)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_debian_version_line() {
        let text = "Server version: Apache/2.4.71 (Debian)\nServer built:   2026-11-12T08:58:41\n";
        assert_eq!(parse_version(text), Some((2, 4, 71)));
        assert_eq!(parse_version("nginx version: nginx/1.22.1"), None);
    }

    #[test]
    fn every_2_4_release_has_the_bug() {
        assert!(has_sharing_bug((2, 4, 71)));
        assert!(has_sharing_bug((2, 4, 0)));
        assert!(!has_sharing_bug((2, 5, 0)));
    }
}
