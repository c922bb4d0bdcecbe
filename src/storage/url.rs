//! Repository URLs: a path, `file:///…`, or `s3://bucket/prefix?region=…&endpoint=…`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::S3Options;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoUrl {
    Local(PathBuf),
    S3(S3Options),
}

#[derive(Debug, thiserror::Error)]
#[error("malformed repository URL {url:?}: {reason}")]
pub struct UrlError {
    pub url: String,
    pub reason: String,
}

impl FromStr for RepoUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| UrlError { url: s.to_string(), reason: reason.to_string() };
        if s.is_empty() {
            return Err(err("empty; give a directory path, file:///path or s3://bucket/prefix"));
        }
        if let Some(rest) = s.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(err("file:// URLs need an absolute path (file:///srv/backups)"));
            }
            return Ok(RepoUrl::Local(PathBuf::from(rest)));
        }
        if s.starts_with("s3://") {
            let u = url::Url::parse(s).map_err(|e| err(&e.to_string()))?;
            if !u.username().is_empty() || u.password().is_some() {
                return Err(err(
                    "credentials do not belong in the URL; use the AWS credential chain (env, profile, web identity)",
                ));
            }
            let bucket = u.host_str().filter(|b| !b.is_empty()).ok_or_else(|| err("no bucket name after s3://"))?;
            if !valid_bucket(bucket) {
                return Err(err("bucket names are 3-63 characters of a-z, 0-9, '.' and '-'"));
            }
            let prefix = u.path().trim_matches('/').to_string();
            let mut opts = S3Options {
                bucket: bucket.to_string(),
                prefix,
                region: None,
                endpoint: None,
                path_style: None,
                allow_http: false,
            };
            for (k, v) in u.query_pairs() {
                match k.as_ref() {
                    "region" => opts.region = Some(v.to_string()),
                    "endpoint" => {
                        let e = url::Url::parse(&v).map_err(|e| err(&format!("endpoint: {e}")))?;
                        if e.scheme() != "http" && e.scheme() != "https" {
                            return Err(err("endpoint must be an http:// or https:// URL"));
                        }
                        opts.endpoint = Some(v.trim_end_matches('/').to_string());
                    }
                    "path_style" => {
                        opts.path_style = Some(parse_bool(&v).ok_or_else(|| err("path_style must be true or false"))?)
                    }
                    "allow_http" => {
                        opts.allow_http = parse_bool(&v).ok_or_else(|| err("allow_http must be true or false"))?
                    }
                    other => {
                        return Err(err(&format!(
                            "unknown parameter {other:?} (known: region, endpoint, path_style, allow_http)"
                        )));
                    }
                }
            }
            if let Some(e) = &opts.endpoint
                && e.starts_with("http://")
                && !opts.allow_http
            {
                return Err(err(
                    "plain-http endpoint refused; TLS is the default. Add allow_http=true only for a local test server",
                ));
            }
            return Ok(RepoUrl::S3(opts));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(err(&format!("unsupported scheme {scheme:?}; use a path, file:///path or s3://bucket/prefix")));
        }
        Ok(RepoUrl::Local(PathBuf::from(s)))
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
}

impl RepoUrl {
    /// The URL as a child process started in another directory must see it:
    /// PostgreSQL runs `restore_command` from inside the data directory, where a
    /// relative local repository path would point nowhere.
    pub fn absolute(&self) -> std::io::Result<String> {
        match self {
            RepoUrl::Local(p) => Ok(std::fs::canonicalize(p)?.display().to_string()),
            other => Ok(other.to_string()),
        }
    }
}

impl fmt::Display for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepoUrl::Local(p) => write!(f, "{}", p.display()),
            RepoUrl::S3(o) => {
                write!(f, "s3://{}/{}", o.bucket, o.prefix)?;
                let mut sep = '?';
                if let Some(r) = &o.region {
                    write!(f, "{sep}region={r}")?;
                    sep = '&';
                }
                if let Some(e) = &o.endpoint {
                    write!(f, "{sep}endpoint={e}")?;
                    sep = '&';
                }
                if let Some(p) = o.path_style {
                    write!(f, "{sep}path_style={p}")?;
                    sep = '&';
                }
                if o.allow_http {
                    write!(f, "{sep}allow_http=true")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_s3() {
        assert_eq!("/srv/b".parse::<RepoUrl>().unwrap(), RepoUrl::Local("/srv/b".into()));
        assert_eq!("file:///srv/b".parse::<RepoUrl>().unwrap(), RepoUrl::Local("/srv/b".into()));
        let u: RepoUrl =
            "s3://my-bucket/a/b?region=us-west-2&endpoint=http://127.0.0.1:9000&allow_http=true".parse().unwrap();
        match &u {
            RepoUrl::S3(o) => {
                assert_eq!(o.bucket, "my-bucket");
                assert_eq!(o.prefix, "a/b");
                assert_eq!(o.region.as_deref(), Some("us-west-2"));
            }
            _ => panic!("not s3"),
        }
        assert_eq!(u.to_string().parse::<RepoUrl>().unwrap(), u);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "s3://",
            "s3://B/x",
            "ftp://x/y",
            "s3://bkt/x?foo=1",
            "s3://bkt/x?endpoint=http://h:1",
            "s3://u:p@bkt/x",
            "file://rel",
        ] {
            assert!(bad.parse::<RepoUrl>().is_err(), "{bad} should be rejected");
        }
    }
}
