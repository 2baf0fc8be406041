//! QR codes as SVG (for TOTP enrolment): qrcodegen computes the modules, this draws them as
//! one path — no image crates, and an `<img src="data:image/svg+xml,…">` passes the UI's CSP.

use keyward_core::Error;
use qrcodegen::{QrCode, QrCodeEcc};
use std::fmt::Write;

/// Modules of white space around the code, as the QR standard asks.
const QUIET_ZONE: i32 = 4;

/// The SVG document for `text`. It carries whatever `text` holds (for TOTP: the secret), so
/// it is sent once and never logged or cached.
pub fn svg(text: &str) -> Result<String, Error> {
    let code = QrCode::encode_text(text, QrCodeEcc::Medium)
        .map_err(|_| Error::internal("the QR code content is too long"))?;
    let size = code.size() + 2 * QUIET_ZONE;
    let mut path = String::with_capacity(64 * 64 * 8);
    for y in 0..code.size() {
        for x in 0..code.size() {
            if code.get_module(x, y) {
                // `write!` to a String cannot fail.
                let _ = write!(path, "M{},{}h1v1h-1z", x + QUIET_ZONE, y + QUIET_ZONE);
            }
        }
    }
    Ok(format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {size} {size}\" \
         shape-rendering=\"crispEdges\" role=\"img\" aria-label=\"QR code\">\
         <rect width=\"{size}\" height=\"{size}\" fill=\"#fff\"/>\
         <path fill=\"#000\" d=\"{path}\"/></svg>"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_dark_module_inside_a_quiet_zone() {
        let text = "otpauth://totp/Keyward:kim?secret=JBSWY3DPEHPK3PXP&issuer=Keyward";
        let code = QrCode::encode_text(text, QrCodeEcc::Medium).expect("code");
        let dark = (0..code.size())
            .flat_map(|y| (0..code.size()).map(move |x| (x, y)))
            .filter(|&(x, y)| code.get_module(x, y))
            .count();
        let drawn = svg(text).expect("svg");
        assert_eq!(drawn.matches('M').count(), dark);
        let side = code.size() + 8;
        assert!(drawn.contains(&format!("viewBox=\"0 0 {side} {side}\"")));
        assert!(drawn.starts_with("<svg") && drawn.ends_with("</svg>"));
    }
}
