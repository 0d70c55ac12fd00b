# cmake -DIN=<proto> -DOUT=<proto> -P strip_proto.cmake
# Removes what etcd's protos need only for Go and the HTTP gateway: the gogoproto import and its
# options, and the google.api.http import and options. The messages and services are unchanged,
# so the generated C++ speaks etcd's wire protocol.
file(READ "${IN}" text)
string(REGEX REPLACE "import \"gogoproto/gogo.proto\";" "" text "${text}")
string(REGEX REPLACE "import \"google/api/annotations.proto\";" "" text "${text}")
string(REGEX REPLACE "option \\(gogoproto\\.[a-z_]+\\) = [a-z]+;" "" text "${text}")
# One level of nesting (additional_bindings { ... }) first, then the plain form.
string(REGEX REPLACE "option \\(google\\.api\\.http\\) = {[^{}]*{[^{}]*}[^{}]*};" "" text "${text}")
string(REGEX REPLACE "option \\(google\\.api\\.http\\) = {[^{}]*};" "" text "${text}")
# Field options such as [(gogoproto.nullable) = false] (none in 3.4's three files, but cheap).
string(REGEX REPLACE " *\\[\\(gogoproto\\.[a-z_]+\\) = [a-z]+\\]" "" text "${text}")
if(text MATCHES "gogoproto|google\\.api")
  message(FATAL_ERROR "${IN}: gogoproto or google.api options left after stripping")
endif()
file(WRITE "${OUT}" "${text}")
