//! The OIDC provider that signs people in for private previews (SPEC 9):
//! discovery, the authorization URL (code flow, PKCE S256, state, nonce),
//! the code exchange and ID-token verification, all by the `openidconnect`
//! crate. Discovery is lazy and retried until it succeeds, so the proxy
//! starts while the provider is down.

use std::time::Duration;

use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClient, CoreClientAuthMethod, CoreGrantType, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreResponseMode, CoreResponseType,
    CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalProviderMetadata, AuthenticationFlow, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge,
    PkceCodeVerifier, ProviderMetadata, RedirectUrl, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use super::LookupError;
use crate::config::OidcSettings;
use crate::http::error_chain;

/// The end-session endpoint, which core metadata does not carry.
#[derive(Clone, Debug, Deserialize, Serialize)]
struct EndSession {
    end_session_endpoint: Option<String>,
}
impl AdditionalProviderMetadata for EndSession {}

type Metadata = ProviderMetadata<
    EndSession,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

type Client =
    CoreClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointMaybeSet, EndpointMaybeSet>;

/// The discovered provider.
struct Provider {
    client: Client,
    end_session: Option<String>,
    /// The settings in use (from the environment, or the API's `/config`).
    settings: OidcSettings,
}

/// What a login must bring back to `/callback`: kept in the signed login
/// cookie, never shown to the provider but for the state and the PKCE
/// challenge.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pending {
    pub state: String,
    pub nonce: String,
    pub verifier: String,
    /// The page the person asked for.
    pub return_to: String,
}

/// Who signed in.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub subject: String,
    /// Only a verified email.
    pub email: Option<String>,
    /// Any email the token names, verified or not: the 403 page shows it.
    pub shown_as: String,
    pub access_token: String,
    pub id_token: String,
}

/// The OIDC part of the API's `GET /config`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiOidc {
    issuer: String,
    client_id: String,
    #[serde(default)]
    audience: Option<String>,
}

pub struct Oidc {
    settings: OidcSettings,
    /// The API's `GET /config`, read when `OIDC_DOMAIN` is not set.
    api_config: Option<String>,
    http: reqwest::Client,
    /// `None` once known: the API's configuration has no OIDC provider.
    provider: OnceCell<Option<Provider>>,
}

impl Oidc {
    /// `None` when there is no provider to ask: no `OIDC_DOMAIN` and no API.
    pub fn new(settings: &OidcSettings, api_url: Option<&str>, timeout: Duration) -> Result<Option<Oidc>, String> {
        let api_config = match (&settings.issuer, api_url) {
            (Some(_), _) => None,
            (None, Some(api)) => Some(format!("{api}/config")),
            (None, None) => return Ok(None),
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the OIDC client: {e}"))?;
        Ok(Some(Oidc { settings: settings.clone(), api_config, http, provider: OnceCell::new() }))
    }

    /// The settings, from the environment or the API's `/config`; `None`
    /// when the API configures no provider.
    async fn settings(&self) -> Result<Option<OidcSettings>, LookupError> {
        let Some(url) = &self.api_config else { return Ok(Some(self.settings.clone())) };
        let unavailable =
            |e: reqwest::Error| LookupError::Unavailable(format!("GET /config failed: {}", e.without_url()));
        let resp = self.http.get(url).send().await.map_err(unavailable)?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(LookupError::Unavailable(format!("GET /config answered {}", resp.status())));
        }
        #[derive(Deserialize)]
        struct ApiConfig {
            oidc: Option<ApiOidc>,
        }
        let body = super::read_answer(resp)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| LookupError::Invalid("GET /config answered over 1 MiB".into()))?;
        let config: ApiConfig = serde_json::from_slice(&body)
            .map_err(|e| LookupError::Invalid(format!("GET /config returned unusable JSON: {e}")))?;
        Ok(config.oidc.map(|o| OidcSettings {
            issuer: Some(o.issuer.trim_end_matches('/').to_string()),
            client_id: o.client_id,
            client_secret: self.settings.client_secret.clone(),
            audience: o.audience.unwrap_or_default(),
            public_issuer: self.settings.public_issuer.clone(),
        }))
    }

    /// Whether login is on (the API's configuration may turn it off). A
    /// provider that cannot be discovered is an error, not "off": the
    /// person gets a 503 page, not a 401 that hides the outage.
    pub async fn enabled(&self) -> Result<bool, LookupError> {
        Ok(self.provider().await?.is_some())
    }

    async fn provider(&self) -> Result<Option<&Provider>, LookupError> {
        let provider = self
            .provider
            .get_or_try_init(|| async {
                let Some(settings) = self.settings().await? else { return Ok(None) };
                let issuer = settings.issuer.clone().unwrap_or_default();
                let issuer = IssuerUrl::new(issuer).map_err(|e| LookupError::Invalid(format!("OIDC_DOMAIN: {e}")))?;
                let metadata = Metadata::discover_async(issuer, &self.http)
                    .await
                    .map_err(|e| LookupError::Unavailable(format!("OIDC discovery failed: {}", error_chain(&e))))?;
                let end_session = metadata.additional_metadata().end_session_endpoint.clone();
                let secret = Some(settings.client_secret.clone()).filter(|s| !s.is_empty()).map(ClientSecret::new);
                let client =
                    CoreClient::from_provider_metadata(metadata, ClientId::new(settings.client_id.clone()), secret);
                Ok::<_, LookupError>(Some(Provider { client, end_session, settings }))
            })
            .await?;
        Ok(provider.as_ref())
    }

    async fn required(&self) -> Result<&Provider, LookupError> {
        self.provider().await?.ok_or_else(|| LookupError::Invalid("the API configures no OIDC provider".into()))
    }

    /// The provider's login URL for a person who asked for `return_to`, and
    /// what the callback must check.
    pub async fn begin(
        &self,
        redirect_uri: &str,
        return_to: String,
        force_login: bool,
    ) -> Result<(String, Pending), LookupError> {
        let provider = self.required().await?;
        let redirect = RedirectUrl::new(redirect_uri.to_string()).map_err(|e| LookupError::Invalid(e.to_string()))?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = provider
            .client
            .authorize_url(
                AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_redirect_uri(std::borrow::Cow::Owned(redirect))
            .add_scope(Scope::new("profile".into()))
            .add_scope(Scope::new("email".into()))
            .set_pkce_challenge(challenge);
        if !provider.settings.audience.is_empty() {
            request = request.add_extra_param("audience", provider.settings.audience.clone());
        }
        if force_login {
            request = request.add_extra_param("prompt", "login");
        }
        let (url, state, nonce) = request.url();
        let pending = Pending {
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            verifier: verifier.secret().clone(),
            return_to,
        };
        Ok((public(&provider.settings, url.as_str()), pending))
    }

    /// Exchanges the code and verifies the ID token (signature from the
    /// provider's keys, issuer, audience, expiry, nonce).
    pub async fn finish(&self, redirect_uri: &str, code: &str, pending: &Pending) -> Result<SignedIn, LookupError> {
        let provider = self.required().await?;
        let redirect = RedirectUrl::new(redirect_uri.to_string()).map_err(|e| LookupError::Invalid(e.to_string()))?;
        let token = provider
            .client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| LookupError::Invalid(format!("the provider has no token endpoint: {e}")))?
            .set_redirect_uri(std::borrow::Cow::Owned(redirect))
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(|e| LookupError::Invalid(format!("the code exchange failed: {}", error_chain(&e))))?;
        let id_token = token.id_token().ok_or_else(|| LookupError::Invalid("the provider sent no ID token".into()))?;
        let verifier = provider.client.id_token_verifier();
        let claims = id_token
            .claims(&verifier, &Nonce::new(pending.nonce.clone()))
            .map_err(|e| LookupError::Invalid(format!("the ID token is not valid: {e}")))?;
        let email = claims.email().map(|e| e.as_str().to_string());
        Ok(SignedIn {
            subject: claims.subject().as_str().to_string(),
            shown_as: email.clone().unwrap_or_else(|| claims.subject().as_str().to_string()),
            email: email.filter(|_| claims.email_verified() == Some(true)),
            access_token: token.access_token().secret().clone(),
            id_token: id_token.to_string(),
        })
    }

    /// Where `/logout` sends the browser after clearing cookies, if the
    /// provider has an end-session endpoint.
    pub async fn end_session(&self, post_logout: &str) -> Option<String> {
        let provider = self.provider().await.ok()??;
        let endpoint = provider.end_session.clone()?;
        let sep = if endpoint.contains('?') { '&' } else { '?' };
        let q = |s: &str| crate::http::escape::segment(s);
        let url = format!(
            "{endpoint}{sep}client_id={}&post_logout_redirect_uri={}",
            q(&provider.settings.client_id),
            q(post_logout)
        );
        Some(public(&provider.settings, &url))
    }
}

/// `url` as browsers reach the provider (`OIDC_PUBLIC_DOMAIN`).
fn public(settings: &OidcSettings, url: &str) -> String {
    match (&settings.issuer, &settings.public_issuer) {
        (Some(internal), Some(public)) if url.starts_with(internal.as_str()) => {
            format!("{public}{}", &url[internal.len()..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_are_sent_to_the_public_issuer() {
        let settings = OidcSettings {
            issuer: Some("http://dex:5556/dex".into()),
            public_issuer: Some("https://id.example.com/dex".into()),
            ..OidcSettings::default()
        };
        assert_eq!(
            public(&settings, "http://dex:5556/dex/auth?client_id=p&state=s"),
            "https://id.example.com/dex/auth?client_id=p&state=s"
        );
        assert_eq!(public(&settings, "https://elsewhere.example.com/auth"), "https://elsewhere.example.com/auth");
        let same = OidcSettings { public_issuer: None, ..settings };
        assert_eq!(public(&same, "http://dex:5556/dex/auth"), "http://dex:5556/dex/auth");
    }
}
