//! The `/oauth/callback` query as axum extracts it, and the page it produces: any query is
//! parsed or refused, and nothing from it reaches the page as markup.
#![no_main]

use authgate::api::http::callback_page;
use authgate::credentials::{CallbackOutcome, CallbackQuery};
use axum::extract::Query;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(uri) = format!("/oauth/callback?{query}").parse::<http::Uri>() else {
        return;
    };
    let Ok(Query(q)) = Query::<CallbackQuery>::try_from_uri(&uri) else {
        return;
    };
    let echo = |s: Option<String>| s.unwrap_or_default();
    let page = callback_page(&CallbackOutcome {
        success: false,
        title: echo(q.error),
        detail: format!("{} {}", echo(q.error_description), echo(q.state)),
    });
    let blank = callback_page(&CallbackOutcome {
        success: false,
        title: String::new(),
        detail: " ".into(),
    });
    assert_eq!(page.matches('<').count(), blank.matches('<').count());
});
