// UTF-8 well-formedness (RFC 3629) and escaping, for echoing client input
// (HTTP targets, job spec strings) in messages and JSON answers.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

namespace kvtune {

// The length of the well-formed UTF-8 sequence at text[i] (RFC 3629, table
// 3-7 of the Unicode standard: no overlong forms, no surrogates, nothing
// above U+10FFFF), or 0 when the byte there does not start one.
std::size_t utf8_sequence(std::string_view text, std::size_t i);

// Whether all of `text` is well-formed UTF-8.
bool valid_utf8(std::string_view text);

// `text` with each byte that is not part of a well-formed sequence replaced
// by replace(byte); well-formed sequences are kept as they are.
std::string map_invalid_utf8(std::string_view text,
                             const std::function<std::string(unsigned char)>& replace);

// `text` with every byte that is not UTF-8 written as the four characters
// \xNN (uppercase hex); valid text is returned as is.
std::string escape_utf8(std::string_view text);

}  // namespace kvtune
