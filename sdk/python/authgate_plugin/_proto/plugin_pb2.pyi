from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RejectKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REJECT_KIND_UNSPECIFIED: _ClassVar[RejectKind]
    REJECT_KIND_CREDENTIAL: _ClassVar[RejectKind]
    REJECT_KIND_SCOPE: _ClassVar[RejectKind]
    REJECT_KIND_REQUEST: _ClassVar[RejectKind]

class TokenTypeHint(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOKEN_TYPE_HINT_UNSPECIFIED: _ClassVar[TokenTypeHint]
    TOKEN_TYPE_HINT_ACCESS_TOKEN: _ClassVar[TokenTypeHint]
    TOKEN_TYPE_HINT_REFRESH_TOKEN: _ClassVar[TokenTypeHint]

class LogLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOG_LEVEL_UNSPECIFIED: _ClassVar[LogLevel]
    LOG_LEVEL_DEBUG: _ClassVar[LogLevel]
    LOG_LEVEL_INFO: _ClassVar[LogLevel]
    LOG_LEVEL_WARN: _ClassVar[LogLevel]
    LOG_LEVEL_ERROR: _ClassVar[LogLevel]
REJECT_KIND_UNSPECIFIED: RejectKind
REJECT_KIND_CREDENTIAL: RejectKind
REJECT_KIND_SCOPE: RejectKind
REJECT_KIND_REQUEST: RejectKind
TOKEN_TYPE_HINT_UNSPECIFIED: TokenTypeHint
TOKEN_TYPE_HINT_ACCESS_TOKEN: TokenTypeHint
TOKEN_TYPE_HINT_REFRESH_TOKEN: TokenTypeHint
LOG_LEVEL_UNSPECIFIED: LogLevel
LOG_LEVEL_DEBUG: LogLevel
LOG_LEVEL_INFO: LogLevel
LOG_LEVEL_WARN: LogLevel
LOG_LEVEL_ERROR: LogLevel

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("kind", "capabilities", "secret_fields", "settings_schema_json", "plugin_version")
    KIND_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELDS_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    kind: str
    capabilities: Capabilities
    secret_fields: _containers.RepeatedScalarFieldContainer[str]
    settings_schema_json: str
    plugin_version: str
    def __init__(self, kind: _Optional[str] = ..., capabilities: _Optional[_Union[Capabilities, _Mapping]] = ..., secret_fields: _Optional[_Iterable[str]] = ..., settings_schema_json: _Optional[str] = ..., plugin_version: _Optional[str] = ...) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("revoke", "authorization_code", "pkce", "refresh_token")
    REVOKE_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_CODE_FIELD_NUMBER: _ClassVar[int]
    PKCE_FIELD_NUMBER: _ClassVar[int]
    REFRESH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    revoke: bool
    authorization_code: bool
    pkce: bool
    refresh_token: bool
    def __init__(self, revoke: _Optional[bool] = ..., authorization_code: _Optional[bool] = ..., pkce: _Optional[bool] = ..., refresh_token: _Optional[bool] = ...) -> None: ...

class ValidateRequest(_message.Message):
    __slots__ = ("settings_json",)
    SETTINGS_JSON_FIELD_NUMBER: _ClassVar[int]
    settings_json: str
    def __init__(self, settings_json: _Optional[str] = ...) -> None: ...

class ValidateResponse(_message.Message):
    __slots__ = ("error", "default_scopes", "requires_refresh_token", "configured_refresh_token", "refresh_token_idle_lifetime_seconds")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SCOPES_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_REFRESH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CONFIGURED_REFRESH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REFRESH_TOKEN_IDLE_LIFETIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    error: str
    default_scopes: _containers.RepeatedScalarFieldContainer[str]
    requires_refresh_token: bool
    configured_refresh_token: str
    refresh_token_idle_lifetime_seconds: int
    def __init__(self, error: _Optional[str] = ..., default_scopes: _Optional[_Iterable[str]] = ..., requires_refresh_token: _Optional[bool] = ..., configured_refresh_token: _Optional[str] = ..., refresh_token_idle_lifetime_seconds: _Optional[int] = ...) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("call_id", "settings_json", "scopes", "refresh_token")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_JSON_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    REFRESH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    settings_json: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    refresh_token: str
    def __init__(self, call_id: _Optional[str] = ..., settings_json: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., refresh_token: _Optional[str] = ...) -> None: ...

class TokenResult(_message.Message):
    __slots__ = ("token", "error")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    token: Token
    error: Error
    def __init__(self, token: _Optional[_Union[Token, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class Token(_message.Message):
    __slots__ = ("access_token", "token_type", "expires_in_seconds", "expires_at_unix", "granted_scopes", "refresh_token", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TYPE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    GRANTED_SCOPES_FIELD_NUMBER: _ClassVar[int]
    REFRESH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    access_token: str
    token_type: str
    expires_in_seconds: int
    expires_at_unix: int
    granted_scopes: _containers.RepeatedScalarFieldContainer[str]
    refresh_token: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, access_token: _Optional[str] = ..., token_type: _Optional[str] = ..., expires_in_seconds: _Optional[int] = ..., expires_at_unix: _Optional[int] = ..., granted_scopes: _Optional[_Iterable[str]] = ..., refresh_token: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("kind", "message", "step", "reject_kind", "code", "retry_after_ms")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Error.Kind]
        KIND_INVALID_CONFIGURATION: _ClassVar[Error.Kind]
        KIND_REJECTED: _ClassVar[Error.Kind]
        KIND_TRANSIENT: _ClassVar[Error.Kind]
        KIND_TIMED_OUT: _ClassVar[Error.Kind]
        KIND_UNSUPPORTED: _ClassVar[Error.Kind]
    KIND_UNSPECIFIED: Error.Kind
    KIND_INVALID_CONFIGURATION: Error.Kind
    KIND_REJECTED: Error.Kind
    KIND_TRANSIENT: Error.Kind
    KIND_TIMED_OUT: Error.Kind
    KIND_UNSUPPORTED: Error.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    REJECT_KIND_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    kind: Error.Kind
    message: str
    step: str
    reject_kind: RejectKind
    code: str
    retry_after_ms: int
    def __init__(self, kind: _Optional[_Union[Error.Kind, str]] = ..., message: _Optional[str] = ..., step: _Optional[str] = ..., reject_kind: _Optional[_Union[RejectKind, str]] = ..., code: _Optional[str] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class RevokeRequest(_message.Message):
    __slots__ = ("call_id", "settings_json", "token", "hint")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_JSON_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    settings_json: str
    token: str
    hint: TokenTypeHint
    def __init__(self, call_id: _Optional[str] = ..., settings_json: _Optional[str] = ..., token: _Optional[str] = ..., hint: _Optional[_Union[TokenTypeHint, str]] = ...) -> None: ...

class RevokeResponse(_message.Message):
    __slots__ = ("error",)
    ERROR_FIELD_NUMBER: _ClassVar[int]
    error: Error
    def __init__(self, error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class AuthorizationUrlRequest(_message.Message):
    __slots__ = ("call_id", "settings_json", "scopes", "state", "code_challenge", "redirect_uri")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_JSON_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CODE_CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    REDIRECT_URI_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    settings_json: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    state: str
    code_challenge: str
    redirect_uri: str
    def __init__(self, call_id: _Optional[str] = ..., settings_json: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., state: _Optional[str] = ..., code_challenge: _Optional[str] = ..., redirect_uri: _Optional[str] = ...) -> None: ...

class AuthorizationUrlResponse(_message.Message):
    __slots__ = ("url", "error")
    URL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    url: str
    error: Error
    def __init__(self, url: _Optional[str] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class ExchangeCodeRequest(_message.Message):
    __slots__ = ("call_id", "settings_json", "code", "code_verifier", "redirect_uri")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_JSON_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    CODE_VERIFIER_FIELD_NUMBER: _ClassVar[int]
    REDIRECT_URI_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    settings_json: str
    code: str
    code_verifier: str
    redirect_uri: str
    def __init__(self, call_id: _Optional[str] = ..., settings_json: _Optional[str] = ..., code: _Optional[str] = ..., code_verifier: _Optional[str] = ..., redirect_uri: _Optional[str] = ...) -> None: ...

class Header(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class FormField(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class Form(_message.Message):
    __slots__ = ("fields",)
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    fields: _containers.RepeatedCompositeFieldContainer[FormField]
    def __init__(self, fields: _Optional[_Iterable[_Union[FormField, _Mapping]]] = ...) -> None: ...

class SendRequest(_message.Message):
    __slots__ = ("call_id", "step", "method", "url", "headers", "form", "json", "secrets", "secret_response_fields")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    FORM_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    SECRET_RESPONSE_FIELDS_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    step: str
    method: str
    url: str
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    form: Form
    json: str
    secrets: _containers.RepeatedScalarFieldContainer[str]
    secret_response_fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, call_id: _Optional[str] = ..., step: _Optional[str] = ..., method: _Optional[str] = ..., url: _Optional[str] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., form: _Optional[_Union[Form, _Mapping]] = ..., json: _Optional[str] = ..., secrets: _Optional[_Iterable[str]] = ..., secret_response_fields: _Optional[_Iterable[str]] = ...) -> None: ...

class SendResponse(_message.Message):
    __slots__ = ("response", "error")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    response: HttpResponse
    error: Error
    def __init__(self, response: _Optional[_Union[HttpResponse, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class HttpResponse(_message.Message):
    __slots__ = ("status", "headers", "body")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    status: int
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    body: bytes
    def __init__(self, status: _Optional[int] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., body: _Optional[bytes] = ...) -> None: ...

class LogRequest(_message.Message):
    __slots__ = ("call_id", "level", "message")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    level: LogLevel
    message: str
    def __init__(self, call_id: _Optional[str] = ..., level: _Optional[_Union[LogLevel, str]] = ..., message: _Optional[str] = ...) -> None: ...

class LogResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
