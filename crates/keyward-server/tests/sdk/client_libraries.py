"""Drives Google's `google-genai` SDK and four market-data clients from PyPI through Keyward.

Each library gets Keyward's proxy URL as its base URL and an app token as its key — the only
two things an application changes. The script prints what came back as one JSON object and
exits non-zero on any unexpected error. Run by the Rust integration test `sdk.rs`, which owns
the fake providers and the checks.
"""

import json
import os

import finnhub
from alpha_vantage.alphavantage import AlphaVantage
from alpha_vantage.timeseries import TimeSeries
from google import genai
from google.genai import types
from polygon import RESTClient
from twelvedata import TDClient

base = os.environ["KEYWARD_URL"]
token = os.environ["KEYWARD_APP_TOKEN"]
out = {}

# Google Gemini: the key goes in x-goog-api-key; a normal and a streamed call.
gemini = genai.Client(
    api_key=token,
    http_options=types.HttpOptions(base_url=f"{base}/proxy/gemini/"),
)
answer = gemini.models.generate_content(model="gemini-2.5-pro", contents="Is AAPL a buy?")
out["gemini_plain"] = answer.text
out["gemini_plain_usage"] = [
    answer.usage_metadata.prompt_token_count,
    answer.usage_metadata.candidates_token_count,
]
streamed = ""
for chunk in gemini.models.generate_content_stream(model="gemini-2.5-pro", contents="Is AAPL a buy?"):
    streamed += chunk.text or ""
out["gemini_streamed"] = streamed

# Alpha Vantage: the client appends `&apikey=` to its fixed base URL.
AlphaVantage._ALPHA_VANTAGE_API_URL = f"{base}/proxy/alpha-vantage/query?"
series = TimeSeries(key=token)
data, meta = series.get_daily("IBM")
out["alpha_vantage_close"] = data["2026-12-04"]["4. close"]
out["alpha_vantage_symbol"] = meta["2. Symbol"]
# A throttle notice arrives as Alpha Vantage sends it, and the client raises as it would.
try:
    series.get_daily("MSFT")
    out["alpha_vantage_throttle"] = "no error"
except ValueError as e:
    out["alpha_vantage_throttle"] = "Thank you for using Alpha Vantage" in str(e)

# Polygon (Massive): Bearer header; `list_tickers` follows `next_url` from page to page.
polygon = RESTClient(api_key=token, base=f"{base}/proxy/polygon", retries=0)
out["polygon_tickers"] = [t.ticker for t in polygon.list_tickers(market="stocks", limit=2)]

# Finnhub: `?token=` on every call.
client = finnhub.Client(api_key=token)
client.API_URL = f"{base}/proxy/finnhub/api/v1"
out["finnhub_quote"] = client.quote("AAPL")["c"]

# Twelve Data: `?apikey=`; the client takes a base URL.
td = TDClient(apikey=token, base_url=f"{base}/proxy/twelve-data")
out["twelve_data_price"] = td.price(symbol="AAPL").as_json()["price"]

print(json.dumps(out))
