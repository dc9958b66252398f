//! The web console (DESIGN §13): sign in with e-mail and password into a server-side session held
//! in a cookie, and the pages, shipped inside the binary (HTML, CSS and JavaScript modules; no
//! build step). The pages call the same API as everyone else: a session authenticates like an API
//! key holding every scope its user's role allows.

pub mod assets;
pub mod body;
pub mod http;
pub mod service;

pub use http::{assets_router, router, session_router};
