"""Span attribute names: the OpenTelemetry GenAI conventions plus ``cmdrdata.*`` extensions.

The GenAI conventions name tokens, models and request parameters; they have no
names (yet) for the other billable units of OpenAI's API (images, audio seconds,
speech characters) nor for attribution, so those live under ``cmdrdata.``.
"""

from __future__ import annotations

# --- OpenTelemetry GenAI semantic conventions -------------------------------------------
OPERATION_NAME = "gen_ai.operation.name"
PROVIDER_NAME = "gen_ai.provider.name"
SYSTEM = "gen_ai.system"  # deprecated alias of provider name, still read by older backends
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
RESPONSE_TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"
REQUEST_TEMPERATURE = "gen_ai.request.temperature"
REQUEST_TOP_P = "gen_ai.request.top_p"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
REQUEST_PRESENCE_PENALTY = "gen_ai.request.presence_penalty"
REQUEST_FREQUENCY_PENALTY = "gen_ai.request.frequency_penalty"
REQUEST_SEED = "gen_ai.request.seed"
REQUEST_CHOICE_COUNT = "gen_ai.request.choice.count"
REQUEST_STOP_SEQUENCES = "gen_ai.request.stop_sequences"
REQUEST_ENCODING_FORMATS = "gen_ai.request.encoding_formats"
REQUEST_STREAM = "gen_ai.request.stream"
OUTPUT_TYPE = "gen_ai.output.type"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
CACHE_CREATION_INPUT_TOKENS = "gen_ai.usage.cache_creation.input_tokens"
REASONING_OUTPUT_TOKENS = "gen_ai.usage.reasoning.output_tokens"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
SERVER_ADDRESS = "server.address"
# Which OpenAI key and project made the call, in the safe form OpenAI's admin API shows
# (the key's last four characters): lets `reconcile` scope OpenAI's usage to the app's keys.
OPENAI_KEY_SUFFIX = "cmdrdata.openai.key_suffix"
OPENAI_PROJECT_ID = "cmdrdata.openai.project_id"
SERVER_PORT = "server.port"
ERROR_TYPE = "error.type"
HTTP_STATUS_CODE = "http.response.status_code"
HTTP_RESEND_COUNT = "http.request.resend_count"

# --- OpenAI-specific conventions ---------------------------------------------------------
OPENAI_API_TYPE = "openai.api.type"
OPENAI_REQUEST_SERVICE_TIER = "openai.request.service_tier"
OPENAI_RESPONSE_SERVICE_TIER = "openai.response.service_tier"
OPENAI_RESPONSE_SYSTEM_FINGERPRINT = "openai.response.system_fingerprint"
OPENAI_REQUEST_ID = "openai.request.id"

# --- cmdrdata extensions: billable units without a convention -----------------------------
TOTAL_TOKENS = "cmdrdata.usage.total_tokens"
INPUT_AUDIO_TOKENS = "cmdrdata.usage.input_audio_tokens"
INPUT_TEXT_TOKENS = "cmdrdata.usage.input_text_tokens"
INPUT_IMAGE_TOKENS = "cmdrdata.usage.input_image_tokens"
OUTPUT_AUDIO_TOKENS = "cmdrdata.usage.output_audio_tokens"
OUTPUT_IMAGE_TOKENS = "cmdrdata.usage.output_image_tokens"
ACCEPTED_PREDICTION_TOKENS = "cmdrdata.usage.accepted_prediction_tokens"
REJECTED_PREDICTION_TOKENS = "cmdrdata.usage.rejected_prediction_tokens"
IMAGE_COUNT = "cmdrdata.usage.image_count"
IMAGE_SIZE = "cmdrdata.usage.image_size"
IMAGE_QUALITY = "cmdrdata.usage.image_quality"
AUDIO_SECONDS = "cmdrdata.usage.audio_seconds"
INPUT_CHARACTERS = "cmdrdata.usage.input_characters"
USAGE_ESTIMATED = "cmdrdata.usage.estimated"
USAGE_SOURCE = "cmdrdata.usage.source"  # "response" | "estimate" | "request" | "none"
# missing_usage | malformed_usage | non_json_body (see usage.model.USAGE_PROBLEMS)
USAGE_PROBLEM = "cmdrdata.usage.problem"
STREAM_OUTCOME = "cmdrdata.stream.outcome"  # completed | closed | abandoned | error
STREAM_USAGE_INJECTED = "cmdrdata.stream.usage_injected"

# --- cmdrdata extensions: attribution -----------------------------------------------------
CUSTOMER_ID = "cmdrdata.customer.id"
CUSTOMER_SOURCE = "cmdrdata.customer.source"  # argument | context | baggage | env
UNATTRIBUTED = "cmdrdata.customer.unattributed"
CUSTOMER_PROBLEM = "cmdrdata.customer.problem"
METADATA_PREFIX = "cmdrdata.metadata."

# Baggage key an upstream service sets to name the customer.
BAGGAGE_CUSTOMER_ID = "cmdrdata.customer_id"

# Present on every span the agent meters: the sampler keeps such spans recorded.
METERED_MARK = "cmdrdata.metered"
# Set when the call's record lacks something the agent normally records: parts it could not
# read from odd input are dropped (named in METERING_DROPPED), or an unexpected failure left
# only a minimal span (operation, model, customer when known).
METERING_DEGRADED = "cmdrdata.metering.degraded"
METERING_DROPPED = "cmdrdata.metering.dropped"  # string[]: metadata, request, content, ...
# Set when another OpenAI instrumentation traces the call: the span is for metering only.
TRACE_SUPPRESSED = "cmdrdata.trace_suppressed"

# The instrumentation scope of the agent's spans.
INSTRUMENTATION_SCOPE = "cmdrdata_autotrack.openai"
