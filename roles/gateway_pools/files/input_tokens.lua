-- The tokens of the largest input of an embedding request, counted by one of the pool's own servers
-- before the request takes a slot. llama-server computes an embedding in one physical batch and
-- refuses a longer input only once a slot has it ("input (N tokens) is too large to process", 500);
-- the pool refuses it at once with 400 instead (haproxy.cfg.j2). The count is the server's own:
-- POST /tokenize with add_special, the call llama-server's /v1/embeddings makes for each input
-- (tokenize_input_subprompt with add_special and parse_special, server-context.cpp). /tokenize runs
-- on the server's HTTP thread and takes no slot.
--
-- Sets txn.input_tokens to the largest count. Leaves it unset where it cannot count (no server up,
-- a body it cannot read, an error from the server): the request then goes on as before, and the
-- server's own check still holds.
--
-- An input is one JSON value of "input": a string, an array of token ids, or an array of those
-- (llama-server's tokenize_input_prompts). Each is sent to /tokenize as it was written, so nothing is
-- decoded here; a scanner finds where each value begins and ends.

local function skip_ws(s, i)
    return s:find("[^ \t\r\n]", i) or #s + 1
end

-- the index just past the JSON value starting at i, or nil when the value is cut off
local function value_end(s, i)
    local c = s:sub(i, i)
    if c == '"' then
        local j = i + 1
        while true do
            local k = s:find('["\\]', j)
            if not k then return nil end
            if s:sub(k, k) == '"' then return k + 1 end
            j = k + 2
        end
    elseif c == "[" or c == "{" then
        local depth, j = 0, i
        while j <= #s do
            local k = s:find('["%[%]{}]', j)
            if not k then return nil end
            local d = s:sub(k, k)
            if d == '"' then
                k = value_end(s, k)
                if not k then return nil end
                j = k
            else
                depth = depth + ((d == "[" or d == "{") and 1 or -1)
                j = k + 1
                if depth == 0 then return j end
            end
        end
        return nil
    end
    local k = s:find("[,%]} \t\r\n]", i)
    return k
end

-- the raw JSON text of each input of the body's top-level "input", or nil
local function inputs(body)
    local i = skip_ws(body, 1)
    if body:sub(i, i) ~= "{" then return nil end
    i = skip_ws(body, i + 1)
    while body:sub(i, i) == '"' do
        local key_end = value_end(body, i)
        if not key_end then return nil end
        local key = body:sub(i + 1, key_end - 2)
        i = skip_ws(body, key_end)
        if body:sub(i, i) ~= ":" then return nil end
        i = skip_ws(body, i + 1)
        local stop = value_end(body, i)
        if not stop then return nil end
        if key == "input" then
            local value = body:sub(i, stop - 1)
            -- an array of strings or of arrays: one input each; a string or an array of ids: one
            local first = skip_ws(value, 2)
            if value:sub(1, 1) ~= "[" or not value:sub(first, first):match('["%[]') then
                return {value}
            end
            local out, j = {}, first
            while j <= #value and value:sub(j, j) ~= "]" do
                local e = value_end(value, j)
                if not e then return nil end
                -- an array holding a token id is one prompt of mixed strings and ids
                if not value:sub(j, j):match('["%[]') then return {value} end
                out[#out + 1] = value:sub(j, e - 1)
                j = skip_ws(value, e)
                if value:sub(j, j) == "," then j = skip_ws(value, j + 1) end
            end
            return out
        end
        i = skip_ws(body, stop)
        if body:sub(i, i) ~= "," then return nil end
        i = skip_ws(body, i + 1)
    end
    return nil
end

-- the address of a server of the pool that is up (draining still answers /tokenize), or nil
local function a_server(backend)
    local pool = core.backends[backend]
    if not pool then return nil end
    for _, server in pairs(pool.servers) do
        local status = server:get_stats()["status"] or ""
        if status:find("^UP") or status:find("^DRAIN") or status:find("^NOLB") then
            return server:get_addr()
        end
    end
    return nil
end

core.register_action("llamafleet_input_tokens", {"http-req"}, function(txn, backend, key)
    local body = txn.f:req_body()
    local length = tonumber((txn.http:req_get_headers()["content-length"] or {})[0])
    if not body or not length or #body < length then
        return  -- larger than HAProxy's buffer (tune.bufsize): the server's own check holds
    end
    local values = inputs(body)
    local address = values and a_server(backend)
    if not address then return end
    local largest = nil
    for _, value in ipairs(values) do
        local reply = core.httpclient():post{
            url = "http://" .. address .. "/tokenize",
            headers = {["authorization"] = {"Bearer " .. key}, ["content-type"] = {"application/json"}},
            body = '{"add_special": true, "content": ' .. value .. "}",
            timeout = 2000,
        }
        if not reply or reply.status ~= 200 or not reply.body then
            core.Warning("llamafleet: /tokenize on " .. address .. " answered " .. tostring(reply and reply.status))
            return
        end
        local count = 0
        for _ in reply.body:gmatch("%-?%d+") do count = count + 1 end
        if not largest or count > largest then largest = count end
    end
    if largest then txn:set_var("txn.input_tokens", largest) end
end, 2)
