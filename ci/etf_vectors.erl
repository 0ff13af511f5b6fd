#!/usr/bin/env escript
%% Vectors for Headwaters' Erlang-term codec and phash2 port, written by the real VM.
%%
%%     escript ci/etf_vectors.erl OUT
%%
%% One line per term: term_to_binary(T) in hex (this OTP's default encoding), then with
%% {minor_version, 2} (UTF-8 atoms) and with {minor_version, 0} (old text floats), then
%% phash2(T, 1 bsl 32), phash2(T), and phash2(T, N) for N = 7, 16, 128, 1000.
%% Edge cases first, then random terms of every kind (fixed seed: the same file each run).
-mode(compile).

main([Out]) ->
    rand:seed(exsss, {20261129, 14, 1}),
    Terms = edge_cases() ++ [random_term(3) || _ <- lists:seq(1, 2400)],
    ok = file:write_file(Out, [line(T) || T <- Terms]),
    io:format("~b vectors from OTP ~s written to ~s~n",
              [length(Terms), erlang:system_info(otp_release), Out]).

line(T) ->
    Hashes = [erlang:phash2(T, 1 bsl 32), erlang:phash2(T)]
        ++ [erlang:phash2(T, N) || N <- [7, 16, 128, 1000]],
    [hex(term_to_binary(T)), $\s,
     hex(term_to_binary(T, [{minor_version, 2}])), $\s,
     hex(term_to_binary(T, [{minor_version, 0}])),
     [[$\s, integer_to_list(H)] || H <- Hashes], $\n].

hex(B) -> [io_lib:format("~2.16.0b", [X]) || <<X>> <= B].

edge_cases() ->
    Powers = [1 bsl 27, 1 bsl 31, 1 bsl 32, 1 bsl 59, 1 bsl 60, 1 bsl 63, 1 bsl 64,
              1 bsl 100, 1 bsl 2100],
    Ints = [0, 1, 255, 256, 65535, 65536, (1 bsl 27) - 1, (1 bsl 63) - 1, (1 bsl 64) + 1]
        ++ lists:append([[P, -P, P - 1, -P + 1, P + 1, -P - 1] || P <- Powers]),
    Floats = [0.0, -0.0, 1.0, -1.5, 0.1, 1.0e300, -1.0e-300, 3.141592653589793,
              5.0e-324, 1.7976931348623157e308, 123456789.0],
    Binaries = [<<>>, <<0>>, <<"user_1">>, <<"sharding_key_1">>, <<"ünïcödé"/utf8>>,
                list_to_binary(lists:seq(0, 255)), binary:copy(<<"ab">>, 400)]
        ++ [binary:part(list_to_binary(lists:seq(1, 40)), 0, N) || N <- lists:seq(1, 25)],
    Bits = [<<1:1>>, <<0:7>>, <<255, 3:2>>, <<"abc", 5:3>>, <<1:4>>,
            <<(binary:copy(<<7>>, 13))/binary, 1:5>>],
    Atoms = ['', a, atom, true, false, nil, ok, error, 'hello world', 'Elixir.Key',
             'ünïcödé', list_to_atom([26085, 26412]), list_to_atom([955, 945, 120]),
             list_to_atom(lists:duplicate(255, $x)), list_to_atom(lists:duplicate(255, 955))],
    Lists = [[], "abc", [1, 2, 3], "user_1", [1000, 2000], lists:seq(1, 300),
             [a], [1, a, "x"], [[1], [2, [3]]],
             [1 | 2], [a | b], [1, 2 | <<"t">>], [300 | 400], ["abc" | "def"], [[] | []]],
    Tuples = [{}, {a}, {a, 1}, {user, <<"id">>, 42}, {{}, {{}}},
              list_to_tuple(lists:seq(1, 300)), {-1.0, [], #{}}],
    Maps = [#{}, #{a => 1}, #{1 => 2, <<"k">> => [x]}, #{a => #{b => #{c => []}}},
            maps:from_list([{N, N * N} || N <- lists:seq(1, 40)]),
            maps:from_list([{list_to_atom("k" ++ integer_to_list(N)), N} || N <- lists:seq(1, 33)]),
            #{{1, 2} => [a], 1.5 => -2, [] => <<>>}],
    Others = [self(), spawn(fun() -> ok end), make_ref(), hd(erlang:ports()),
              fun erlang:phash2/2, fun lists:seq/2,
              {self(), make_ref()}, [make_ref() | self()]],
    Ints ++ Floats ++ Binaries ++ Bits ++ Atoms ++ Lists ++ Tuples ++ Maps ++ Others.

random_term(0) -> leaf();
random_term(Depth) ->
    case rand:uniform(12) of
        1 -> list_to_tuple(some(Depth));
        2 -> some(Depth);
        3 -> maps:from_list([{random_term(Depth - 1), random_term(Depth - 1)}
                             || _ <- lists:seq(1, rand:uniform(4) - 1)]);
        4 -> [random_term(Depth - 1) | leaf()];
        _ -> leaf()
    end.

some(Depth) -> [random_term(Depth - 1) || _ <- lists:seq(1, rand:uniform(5) - 1)].

leaf() ->
    Sign = case rand:uniform(2) of 1 -> 1; 2 -> -1 end,
    case rand:uniform(11) of
        1 -> rand:uniform(256) - 1;
        2 -> Sign * rand:uniform(1 bsl 28);
        3 -> Sign * rand:uniform(1 bsl 32);
        4 -> Sign * rand:uniform(1 bsl 64) * rand:uniform(1 bsl (rand:uniform(90)));
        5 -> Sign * rand:uniform() * math:pow(10, rand:uniform(60) - 30);
        6 -> rand:bytes(rand:uniform(40) - 1);
        7 -> list_to_atom(name());
        8 -> [rand:uniform(256) - 1 || _ <- lists:seq(1, rand:uniform(12))];
        9 -> N = rand:uniform(7),
             <<(rand:bytes(rand:uniform(5) - 1))/binary, (rand:uniform(1 bsl N) - 1):N>>;
        10 -> unicode:characters_to_binary(name());
        11 -> [rand:uniform(2000) || _ <- lists:seq(1, rand:uniform(4))]
    end.

name() ->
    Alphabet = "abcxyz_ABC019" ++ [233, 252, 955, 26085],
    [lists:nth(rand:uniform(length(Alphabet)), Alphabet) || _ <- lists:seq(1, rand:uniform(12))].
