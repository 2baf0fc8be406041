-- What each app token has been seen doing (source networks, models, endpoint shapes),
-- with when it was first seen: the first time a settled token does something new is a
-- new_network / new_model / new_endpoint alert. One row per token, kind and value, so
-- instances that see the same new thing insert it once.
CREATE TABLE token_sightings (
    token_id   TEXT NOT NULL,
    kind       TEXT NOT NULL,
    value      TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    PRIMARY KEY (token_id, kind, value)
);
