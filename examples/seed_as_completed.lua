-- Python:
--   with ThreadPoolExecutor(max_workers=5) as executor:
--       future_to_url = {executor.submit(load_url, url, 60): url for url in URLS}
--       for future in concurrent.futures.as_completed(future_to_url):
--           url = future_to_url[future]
--           try:
--               data = future.result()
--           except Exception as exc:
--               print('%r generated an exception: %s' % (url, exc))
--           else:
--               print('%r page is %d bytes' % (url, len(data)))
--
-- There is no network here, so load_url renders a page of a size that
-- depends on the URL, slowly, and fails for one of them.
local loom = require "loom"

local URLS = {
  "http://www.foxnews.com/", "http://www.cnn.com/",
  "http://europe.wsj.com/", "http://www.bbc.co.uk/",
  "http://nonexistent-subdomain.python.org/",
}

local function load_url(url, timeout)
  if url:find("nonexistent", 1, true) then
    error("cannot resolve " .. url .. " (timeout " .. timeout .. " s)")
  end
  local parts, seed = {}, #url
  for i = 1, 20000 * (seed % 7 + 1) do
    parts[#parts + 1] = string.char(97 + (i * seed) % 26)
  end
  return table.concat(parts)
end

local executor <close> = loom.executor { workers = 5 }
local future_to_url, futures = {}, {}
for _, url in ipairs(URLS) do
  local f = executor:submit(load_url, url, 60)
  future_to_url[f] = url
  futures[#futures + 1] = f
end
for future in loom.as_completed(futures) do
  local url = future_to_url[future]
  local ok, data = pcall(future.result, future)
  if not ok then
    print(("%q generated an exception: %s"):format(url, tostring(data)))
  else
    print(("%q page is %d bytes"):format(url, #data))
  end
end
