//! Archive nodes: `AET@HOST:PORT` for DIMSE or an `http(s)://` base URL for DICOMweb, with the
//! options a hospital needs (our AE title, TLS and its CA, HTTP credentials, how to retrieve).

use std::path::PathBuf;

use super::{PacsError, DEFAULT_AE_TITLE};

/// Where a node is and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeSpec {
    /// A DIMSE application entity.
    Dimse {
        /// The archive's (called) AE title.
        ae_title: String,
        /// Host name or address.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// A DICOMweb service root, e.g. `http://pacs:8042/dicom-web`.
    Web {
        /// Base URL without a trailing slash.
        base_url: String,
    },
}

impl NodeSpec {
    /// Parse `AET@HOST:PORT` or an `http(s)://` URL.
    pub fn parse(s: &str) -> Result<Self, PacsError> {
        let s = s.trim();
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let base_url = s.trim_end_matches('/').to_string();
            if base_url
                .split("://")
                .nth(1)
                .is_none_or(|rest| rest.is_empty())
            {
                return Err(PacsError::Invalid(format!("{s:?} has no host")));
            }
            return Ok(NodeSpec::Web { base_url });
        }
        let bad = || {
            PacsError::Invalid(format!(
                "node {s:?} must be AET@HOST:PORT (DIMSE) or an http(s):// base URL (DICOMweb)"
            ))
        };
        let (ae, addr) = s.split_once('@').ok_or_else(bad)?;
        let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        check_ae_title(ae)?;
        Ok(NodeSpec::Dimse {
            ae_title: ae.to_string(),
            host: host.to_string(),
            port,
        })
    }

    /// `AET@HOST:PORT` or the URL.
    pub fn address(&self) -> String {
        match self {
            NodeSpec::Dimse {
                ae_title,
                host,
                port,
            } if host.contains(':') => format!("{ae_title}@[{host}]:{port}"),
            NodeSpec::Dimse {
                ae_title,
                host,
                port,
            } => format!("{ae_title}@{host}:{port}"),
            NodeSpec::Web { base_url } => base_url.clone(),
        }
    }
}

/// An AE title is 1–16 characters of printable ASCII without a backslash, not all spaces.
pub fn check_ae_title(ae: &str) -> Result<(), PacsError> {
    let ok = !ae.trim().is_empty()
        && ae.len() <= 16
        && ae.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'\\');
    if ok {
        Ok(())
    } else {
        Err(PacsError::Invalid(format!(
            "AE title {ae:?} must be 1-16 printable ASCII characters without a backslash"
        )))
    }
}

/// HTTP credentials for DICOMweb.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Auth {
    /// No credentials.
    #[default]
    None,
    /// HTTP basic authentication.
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// `Authorization: Bearer TOKEN`.
    Bearer {
        /// The token.
        token: String,
    },
}

impl Auth {
    /// The `Authorization` header value, if any.
    pub fn header(&self) -> Option<String> {
        use base64::Engine as _;
        match self {
            Auth::None => None,
            Auth::Basic { user, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            )),
            Auth::Bearer { token } => Some(format!("Bearer {token}")),
        }
    }
}

/// How a DIMSE node's studies are fetched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetrieveMethod {
    /// C-GET: instances come back on the same association (no port to open).
    #[default]
    Get,
    /// C-MOVE to our own storage SCP (the archive must know our AE title, host and port).
    Move,
}

impl std::str::FromStr for RetrieveMethod {
    type Err = PacsError;
    fn from_str(s: &str) -> Result<Self, PacsError> {
        match s.to_ascii_lowercase().as_str() {
            "get" => Ok(RetrieveMethod::Get),
            "move" => Ok(RetrieveMethod::Move),
            _ => Err(PacsError::Invalid(format!(
                "method must be get or move, not {s:?}"
            ))),
        }
    }
}

/// A named archive, as kept with the settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Node {
    /// Name shown to the user.
    pub name: String,
    /// `AET@HOST:PORT` or an `http(s)://` base URL.
    pub address: String,
    /// Our AE title towards this node.
    pub our_ae_title: String,
    /// DIMSE over TLS.
    pub tls: bool,
    /// PEM file of the CA that signed the archive's certificate (else the public web roots).
    pub ca_file: Option<PathBuf>,
    /// DICOMweb credentials.
    pub auth: Auth,
    /// C-GET or C-MOVE.
    pub retrieve: RetrieveMethod,
    /// Port of our storage SCP during a C-MOVE.
    pub move_port: u16,
}

impl Default for Node {
    fn default() -> Self {
        Self {
            name: String::new(),
            address: String::new(),
            our_ae_title: DEFAULT_AE_TITLE.into(),
            tls: false,
            ca_file: None,
            auth: Auth::None,
            retrieve: RetrieveMethod::Get,
            move_port: 11113,
        }
    }
}

impl Node {
    /// A node from an address with default options.
    pub fn from_address(address: &str, our_ae_title: &str) -> Result<Self, PacsError> {
        let spec = NodeSpec::parse(address)?;
        check_ae_title(our_ae_title)?;
        Ok(Node {
            name: spec.address(),
            address: spec.address(),
            our_ae_title: our_ae_title.to_string(),
            ..Default::default()
        })
    }

    /// The parsed address.
    pub fn spec(&self) -> Result<NodeSpec, PacsError> {
        NodeSpec::parse(&self.address)
    }

    /// Check everything a connection would need.
    pub fn validate(&self) -> Result<NodeSpec, PacsError> {
        let spec = self.spec()?;
        if matches!(spec, NodeSpec::Dimse { .. }) {
            check_ae_title(&self.our_ae_title)?;
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_parse() {
        assert_eq!(
            NodeSpec::parse("ORTHANC@127.0.0.1:4242").unwrap(),
            NodeSpec::Dimse {
                ae_title: "ORTHANC".into(),
                host: "127.0.0.1".into(),
                port: 4242
            }
        );
        let v6 = NodeSpec::parse("PACS@[::1]:104").unwrap();
        assert_eq!(v6.address(), "PACS@[::1]:104");
        assert_eq!(
            NodeSpec::parse("https://pacs.example/dicom-web/").unwrap(),
            NodeSpec::Web {
                base_url: "https://pacs.example/dicom-web".into()
            }
        );
        for bad in [
            "ORTHANC",
            "ORTHANC@host",
            "@host:104",
            "ORTHANC@:104",
            "ORTHANC@host:0",
            "ORTHANC@host:99999",
            "A_TITLE_LONGER_THAN_16@h:1",
            "BACK\\SLASH@h:1",
            "http://",
        ] {
            assert!(NodeSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn basic_auth_header() {
        let a = Auth::Basic {
            user: "lofi".into(),
            password: "secret".into(),
        };
        assert_eq!(a.header().unwrap(), "Basic bG9maTpzZWNyZXQ=");
        assert_eq!(Auth::None.header(), None);
    }
}
