std = "lua54"
max_line_length = 120
files["spec"] = { std = "+busted" }
files["bench"] = { globals = { "arg" } }
files["spec/fixtures/loom_busted/tasks"] = { globals = { "HELPER_RAN" } }
files["spec/fixtures/loom_busted/globals"] = { globals = { "LEAKED_GLOBAL", "string" } }
-- a fixture that must not compile
exclude_files = { "build", "luarocks-tree", "spec/fixtures/loom_busted/syntax/f_syntax_check.lua" }
